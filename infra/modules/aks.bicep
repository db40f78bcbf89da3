// The AKS cluster: Entra ID RBAC with local accounts off, OIDC issuer + workload identity, the
// Key Vault secrets provider with rotation, Container Insights and Managed Prometheus, the KEDA
// add-on when Service Bus dispatch is chosen, AGIC on the Application Gateway, and node pools:
// system (critical add-ons only), cpu (API, controller), gpu (tainted, labelled with the lanes
// it serves, autoscaled) and one optional pool per MIG profile the lanes use.

param location string
param tags object
param name string
param kubernetesVersion string
@description('Entra ID groups whose members are cluster admins (Azure RBAC for Kubernetes).')
param adminGroupObjectIds array
@description('A private API server (reach it through Bastion or a runner in the VNet); else authorizedIpRanges.')
param privateCluster bool
param authorizedIpRanges array
param vnetName string
param systemSubnetId string
param cpuSubnetId string
param gpuSubnetId string
param appGatewayId string
param logAnalyticsId string
param keda bool
param systemVmSize string
param cpuVmSize string
param cpuMaxCount int
param gpuVmSize string
param gpuMinCount int
param gpuMaxCount int
@description('Create the MIG pools of lanes.migPools.')
param mig bool
param migVmSize string
param migMaxCount int
@description('infra/generated/lanes.json (labels per pool, MIG pools).')
param lanes object

// Zone-redundant where the region has zones; GPU SKUs are often in fewer zones, so GPU pools
// take the region's default placement.
var zones = ['1', '2', '3']
var gpuTaints = ['sku=gpu:NoSchedule'] // tolerated by every GPU lane (kubernetes_spec.GPU_TOLERATIONS)
var maxPods = 50

resource controlPlane 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-control-plane'
  location: location
  tags: tags
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' existing = {
  name: vnetName
}

var networkContributor = '4d97b98b-1d4f-4787-a291-c67834d212e7'

// With its own VNet, the control plane identity joins nodes and load balancers to the subnets.
resource joinsSubnets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vnet
  name: guid(vnet.id, controlPlane.id, networkContributor)
  properties: {
    principalId: controlPlane.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', networkContributor)
  }
}

resource cluster 'Microsoft.ContainerService/managedClusters@2024-09-01' = {
  dependsOn: [joinsSubnets]
  name: name
  location: location
  tags: tags
  sku: { name: 'Base', tier: 'Standard' } // the uptime SLA tier
  // checkov:skip=CKV_AZURE_8: the kube-dashboard add-on no longer exists on AKS (removed for Kubernetes 1.19+); nothing can enable it, and the API refuses its profile.
  // checkov:skip=CKV_AZURE_172: rotation is on (azureKeyvaultSecretsProvider.config.enableSecretRotation); the add-on's config is a map of strings, so the value is 'true', which the check, expecting a boolean, does not match.
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${controlPlane.id}': {} }
  }
  properties: {
    kubernetesVersion: kubernetesVersion
    dnsPrefix: name
    nodeResourceGroup: 'MC_${resourceGroup().name}_${name}'
    enableRBAC: true
    disableLocalAccounts: true
    aadProfile: {
      managed: true
      enableAzureRBAC: true
      adminGroupObjectIDs: adminGroupObjectIds
      tenantID: subscription().tenantId
    }
    apiServerAccessProfile: {
      enablePrivateCluster: privateCluster
      privateDNSZone: privateCluster ? 'system' : null
      authorizedIPRanges: privateCluster ? [] : authorizedIpRanges
    }
    oidcIssuerProfile: { enabled: true }
    securityProfile: {
      workloadIdentity: { enabled: true }
      imageCleaner: { enabled: true, intervalHours: 48 }
    }
    workloadAutoScalerProfile: {
      keda: { enabled: keda }
    }
    azureMonitorProfile: {
      metrics: { enabled: true } // Managed Prometheus; the DCR in prometheus.bicep sends to the workspace
    }
    autoUpgradeProfile: {
      upgradeChannel: 'patch'
      nodeOSUpgradeChannel: 'NodeImage'
    }
    networkProfile: {
      // Azure CNI (not overlay): AGIC sends to pod IPs, which must be VNet addresses.
      networkPlugin: 'azure'
      networkPolicy: 'azure'
      loadBalancerSku: 'standard'
      outboundType: 'loadBalancer'
      serviceCidr: '10.0.0.0/16'
      dnsServiceIP: '10.0.0.10'
    }
    addonProfiles: {
      azureKeyvaultSecretsProvider: {
        enabled: true
        config: {
          enableSecretRotation: 'true' // a renewed TLS certificate reaches the Ingress without a restart
          rotationPollInterval: '2m'
        }
      }
      omsagent: {
        enabled: true
        config: {
          logAnalyticsWorkspaceResourceID: logAnalyticsId
          useAADAuth: 'true'
        }
      }
      ingressApplicationGateway: {
        enabled: true
        config: { applicationGatewayId: appGatewayId }
      }
      azurepolicy: {
        enabled: true
        config: { version: 'v2' }
      }
    }
    agentPoolProfiles: [
      {
        name: 'system'
        mode: 'System'
        vmSize: systemVmSize
        osType: 'Linux'
        osSKU: 'AzureLinux'
        osDiskType: 'Ephemeral'
        enableEncryptionAtHost: true
        availabilityZones: zones
        enableAutoScaling: true
        count: 2
        minCount: 2
        maxCount: 3
        maxPods: maxPods
        vnetSubnetID: systemSubnetId
        nodeTaints: ['CriticalAddonsOnly=true:NoSchedule'] // nothing of difflane's lands here
        upgradeSettings: { maxSurge: '33%' }
      }
    ]
  }
}

resource cpu 'Microsoft.ContainerService/managedClusters/agentPools@2024-09-01' = {
  parent: cluster
  name: 'cpu'
  properties: {
    mode: 'User'
    vmSize: cpuVmSize
    osType: 'Linux'
    osSKU: 'AzureLinux'
    osDiskType: 'Ephemeral'
    enableEncryptionAtHost: true
    availabilityZones: zones
    enableAutoScaling: true
    count: 2
    minCount: 2
    maxCount: cpuMaxCount
    maxPods: maxPods
    vnetSubnetID: cpuSubnetId
    nodeLabels: lanes.cpuPoolLabels
    upgradeSettings: { maxSurge: '33%' }
  }
}

// Whole GPUs. The autoscaler may take the pool to gpuMinCount (0: no GPU bill while idle).
resource gpu 'Microsoft.ContainerService/managedClusters/agentPools@2024-09-01' = {
  parent: cluster
  name: 'gpu'
  properties: {
    mode: 'User'
    vmSize: gpuVmSize
    osType: 'Linux'
    osSKU: 'Ubuntu'
    osDiskType: 'Managed' // GPU SKUs' temp disks are too small for an ephemeral OS disk with large images
    osDiskSizeGB: 256
    enableEncryptionAtHost: true
    enableAutoScaling: true
    count: gpuMinCount
    minCount: gpuMinCount
    maxCount: gpuMaxCount
    maxPods: maxPods
    vnetSubnetID: gpuSubnetId
    nodeLabels: lanes.gpuPoolLabels
    nodeTaints: gpuTaints
    upgradeSettings: { maxSurge: '1' }
  }
}

// One pool per MIG profile of the lanes. difflane asks for nvidia.com/mig-<profile>, the NVIDIA GPU
// operator's "mixed" strategy; AKS's own MIG pools (gpuInstanceProfile) use "single" and offer
// only nvidia.com/gpu. So these pools skip AKS's driver install and carry the MIG manager's
// nvidia.com/mig.config label, and the GPU operator partitions them (deploy/k8s/components/mig).
@batchSize(1)
resource migPools 'Microsoft.ContainerService/managedClusters/agentPools@2024-09-01' = [
  for pool in (mig ? lanes.migPools : []): {
    parent: cluster
    name: pool.name
    properties: {
      tags: { SkipGPUDriverInstall: 'true' } // the GPU operator brings the driver
      mode: 'User'
      vmSize: migVmSize
      osType: 'Linux'
      osSKU: 'Ubuntu'
      osDiskType: 'Managed'
      osDiskSizeGB: 256
      enableEncryptionAtHost: true
      enableAutoScaling: true
      count: 0
      minCount: 0
      maxCount: migMaxCount
      maxPods: maxPods
      vnetSubnetID: gpuSubnetId
      nodeLabels: pool.labels
      nodeTaints: gpuTaints
      upgradeSettings: { maxSurge: '1' }
    }
  }
]

resource audit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  scope: cluster
  name: 'audit'
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      { category: 'kube-audit-admin', enabled: true }
      { category: 'guard', enabled: true }
    ]
  }
}

output id string = cluster.id
output name string = cluster.name
output oidcIssuerUrl string = cluster.properties.oidcIssuerProfile.issuerURL
output kubeletPrincipalId string = cluster.properties.identityProfile.kubeletidentity.objectId
output agicPrincipalId string = cluster.properties.addonProfiles.ingressApplicationGateway.identity.objectId
output controlPlanePrincipalId string = controlPlane.properties.principalId
output secretsProviderClientId string = cluster.properties.addonProfiles.azureKeyvaultSecretsProvider.identity.clientId
