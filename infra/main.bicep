// difflane on Azure: everything the cluster's workloads reference, in one resource group.
// `azd up` deploys this with main.parameters.json; the infra workflow with env/<environment>.parameters.json.
// The lanes come from infra/generated/lanes.json, which scripts/render-lanes writes from the
// lanes file (deploy/k8s/base/config/lanes.yaml): one queue and node-pool labels per lane.
targetScope = 'subscription'

@minLength(1)
@maxLength(20)
@description('Environment name (azd): dev, prod, ... Part of every resource name.')
param environmentName string

@minLength(1)
param location string

@description('Object id of whoever runs azd (cluster admin, Grafana admin, Key Vault certificates officer). Empty in CI.')
param principalId string = ''

@allowed(['User', 'Group', 'ServicePrincipal'])
param principalType string = 'User'

@allowed(['kubernetes', 'servicebus'])
@description('How the API hands jobs to workers: Kubernetes Jobs (+ Kueue), or Service Bus queues + KEDA.')
param dispatch string = 'servicebus'

@allowed(['Standard', 'Premium'])
@description('Premium for a private endpoint (production); Standard has only a public, Entra-only endpoint.')
param serviceBusSku string = 'Premium'

@description('Private API server (operators through Bastion, deploys from a runner in the VNet).')
param privateCluster bool = true

@description('With a public API server: the CIDRs allowed to reach it.')
param authorizedIpRanges array = []

@description('Entra ID groups of cluster administrators.')
param adminGroupObjectIds array = []

param kubernetesVersion string = '1.33'
param systemVmSize string = 'Standard_D4ds_v5'
param cpuVmSize string = 'Standard_D8ds_v5'
param cpuMaxCount int = 10
param gpuVmSize string = 'Standard_NC40ads_H100_v5'
@minValue(0)
param gpuMinCount int = 0
@minValue(1)
param gpuMaxCount int = 4

@description('Create a node pool per MIG profile the lanes use (GPU instance profile on A100/H100 SKUs).')
param enableMig bool = false
param migVmSize string = 'Standard_NC40ads_H100_v5'
@minValue(1)
param migMaxCount int = 2

param enableFrontDoor bool = false
param enableBastion bool = true

@description('Let CI push images from GitHub-hosted runners (off: push from a runner inside the VNet).')
param registryPublicAccess bool = false

@description('Key Vault certificate for Application Gateway; empty until it has been imported (docs/howto/deploy-aks.md).')
param tlsCertificateName string = ''

@description('The public host name of the API (the Ingress host).')
param apiHost string = 'difflane.example.com'

@description('GitHub OIDC subjects the CI identity trusts, e.g. repo:ORG/REPO:environment:dev.')
param githubSubjects array = []

@description('Production: the dev registry images are promoted from (resource id); empty otherwise.')
param promoteFromRegistryId string = ''

@minValue(1)
param resultRetentionDays int = 30
@minValue(30)
param logRetentionDays int = 30

var lanes = loadJsonContent('generated/lanes.json')
var namespace = lanes.namespace
var serviceBus = dispatch == 'servicebus'
var token = uniqueString(subscription().id, environmentName, location)
var prefix = 'difflane-${environmentName}'
var tags = {
  'azd-env-name': environmentName
  application: 'difflane'
}
var container = 'difflane' // DIFFLANE_AZURE_CONTAINER
var baseZones = [
  'privatelink.blob.${environment().suffixes.storage}'
  'privatelink.vaultcore.azure.net'
  'privatelink.azurecr.io'
]
var serviceBusZones = serviceBus && serviceBusSku == 'Premium' ? ['privatelink.servicebus.windows.net'] : []
var zoneNames = concat(baseZones, serviceBusZones) // the modules below take them by index, Service Bus last
var appGatewayName = '${prefix}-agw'

resource group 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${prefix}'
  location: location
  tags: tags
}

module network 'modules/network.bicep' = {
  scope: group
  name: 'network'
  params: {
    location: location
    tags: tags
    name: '${prefix}-vnet'
    privateDnsZoneNames: zoneNames
    frontDoorOnly: enableFrontDoor
  }
}

module bastion 'modules/bastion.bicep' = if (enableBastion) {
  scope: group
  name: 'bastion'
  params: {
    location: location
    tags: tags
    name: '${prefix}-bastion'
    subnetId: network.outputs.bastionSubnetId
  }
}

module monitoring 'modules/monitoring.bicep' = {
  scope: group
  name: 'monitoring'
  params: {
    location: location
    tags: tags
    name: prefix
    retentionDays: logRetentionDays
    grafanaAdminPrincipalId: principalId
    grafanaAdminPrincipalType: principalType
  }
}

module registry 'modules/registry.bicep' = {
  scope: group
  name: 'registry'
  params: {
    location: location
    tags: tags
    name: 'crdl${token}'
    subnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneId: network.outputs.privateDnsZoneIds[2]
    publicNetworkAccess: registryPublicAccess
  }
}

module vault 'modules/keyvault.bicep' = {
  scope: group
  name: 'keyvault'
  params: {
    location: location
    tags: tags
    name: 'kv-dl-${token}'
    subnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneId: network.outputs.privateDnsZoneIds[1]
    logAnalyticsId: monitoring.outputs.logAnalyticsId
  }
}

module storage 'modules/storage.bicep' = {
  scope: group
  name: 'storage'
  params: {
    location: location
    tags: tags
    name: 'stdl${token}'
    container: container
    resultRetentionDays: resultRetentionDays
    subnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneId: network.outputs.privateDnsZoneIds[0]
    logAnalyticsId: monitoring.outputs.logAnalyticsId
  }
}

module workloads 'modules/workloads.bicep' = {
  scope: group
  name: 'workloads'
  params: {
    location: location
    tags: tags
    name: prefix
    controller: !serviceBus
    keda: serviceBus
  }
}

module frontDoor 'modules/frontdoor.bicep' = if (enableFrontDoor) {
  scope: group
  name: 'frontdoor'
  params: {
    tags: tags
    name: '${prefix}-fd'
    originHostName: '${appGatewayName}.${location}.cloudapp.azure.com' // the gateway IP's DNS label
  }
}

module gateway 'modules/appgateway.bicep' = {
  scope: group
  name: 'appgateway'
  params: {
    location: location
    tags: tags
    name: appGatewayName
    subnetId: network.outputs.appGatewaySubnetId
    keyVaultName: vault.outputs.name
    keyVaultUri: vault.outputs.uri
    tlsCertificateName: tlsCertificateName
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    frontDoorId: enableFrontDoor ? frontDoor!.outputs.frontDoorId : ''
  }
}

module cluster 'modules/aks.bicep' = {
  scope: group
  name: 'aks'
  params: {
    location: location
    tags: tags
    name: '${prefix}-aks'
    kubernetesVersion: kubernetesVersion
    adminGroupObjectIds: adminGroupObjectIds
    privateCluster: privateCluster
    authorizedIpRanges: authorizedIpRanges
    vnetName: '${prefix}-vnet'
    systemSubnetId: network.outputs.systemSubnetId
    cpuSubnetId: network.outputs.cpuSubnetId
    gpuSubnetId: network.outputs.gpuSubnetId
    appGatewayId: gateway.outputs.id
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    keda: serviceBus
    systemVmSize: systemVmSize
    cpuVmSize: cpuVmSize
    cpuMaxCount: cpuMaxCount
    gpuVmSize: gpuVmSize
    gpuMinCount: gpuMinCount
    gpuMaxCount: gpuMaxCount
    mig: enableMig
    migVmSize: migVmSize
    migMaxCount: migMaxCount
    lanes: lanes
  }
}

module prometheus 'modules/prometheus.bicep' = {
  scope: group
  name: 'prometheus'
  params: {
    location: location
    tags: tags
    name: prefix
    clusterName: cluster.outputs.name
    prometheusId: monitoring.outputs.prometheusId
  }
}

module federation 'modules/federation.bicep' = {
  scope: group
  name: 'federation'
  params: {
    oidcIssuerUrl: cluster.outputs.oidcIssuerUrl
    namespace: namespace
    apiIdentityName: workloads.outputs.apiName
    workerIdentityName: workloads.outputs.workerName
    controllerIdentityName: workloads.outputs.controllerName
    kedaIdentityName: workloads.outputs.kedaName
  }
}

module roles 'modules/roles.bicep' = {
  scope: group
  name: 'roles'
  params: {
    storageAccountName: storage.outputs.name
    containerName: container
    keyVaultName: vault.outputs.name
    registryName: registry.outputs.name
    appGatewayName: gateway.outputs.name
    appGatewaySubnetName: 'app-gateway'
    vnetName: '${prefix}-vnet'
    apiPrincipalId: workloads.outputs.apiPrincipalId
    workerPrincipalId: workloads.outputs.workerPrincipalId
    controllerPrincipalId: workloads.outputs.controllerPrincipalId
    kubeletPrincipalId: cluster.outputs.kubeletPrincipalId
    agicPrincipalId: cluster.outputs.agicPrincipalId
  }
}

module queues 'modules/servicebus.bicep' = if (serviceBus) {
  scope: group
  name: 'servicebus'
  params: {
    location: location
    tags: tags
    name: 'sb-dl-${token}'
    sku: serviceBusSku
    queues: [for lane in lanes.lanes: lane.queue]
    subnetId: network.outputs.privateEndpointSubnetId
    privateDnsZoneId: last(network.outputs.privateDnsZoneIds) // the Service Bus zone when Premium (only then used)
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    apiPrincipalId: workloads.outputs.apiPrincipalId
    workerPrincipalId: workloads.outputs.workerPrincipalId
    kedaPrincipalId: workloads.outputs.kedaPrincipalId
  }
}

module delivery 'modules/delivery.bicep' = if (!empty(githubSubjects)) {
  scope: group
  name: 'delivery'
  params: {
    location: location
    tags: tags
    name: '${prefix}-github'
    subjects: githubSubjects
    registryName: registry.outputs.name
    clusterName: cluster.outputs.name
    importsImages: !empty(promoteFromRegistryId)
  }
}

module promotion 'modules/promotion.bicep' = if (!empty(promoteFromRegistryId) && !empty(githubSubjects)) {
  scope: resourceGroup(split(promoteFromRegistryId, '/')[2], split(promoteFromRegistryId, '/')[4])
  name: 'promotion-${environmentName}'
  params: {
    registryName: last(split(promoteFromRegistryId, '/'))
    principalId: delivery!.outputs.principalId
  }
}

module operator 'modules/operator.bicep' = if (!empty(principalId)) {
  scope: group
  name: 'operator'
  params: {
    principalId: principalId
    principalType: principalType
    clusterName: cluster.outputs.name
    keyVaultName: vault.outputs.name
  }
}

// azd writes these to the environment (.azure/<env>/.env) and hands them to its hooks;
// infra/hooks/postprovision.sh turns them into deploy/k8s/overlays/azd (nothing pasted by hand).
// CI reads the same values from the resource group's difflane-outputs deployment.
var published = {
  AZURE_LOCATION: location
  AZURE_TENANT_ID: subscription().tenantId
  AZURE_RESOURCE_GROUP: group.name
  AZURE_AKS_CLUSTER_NAME: cluster.outputs.name
  AZURE_AKS_CLUSTER_ID: cluster.outputs.id
  AZURE_CONTAINER_REGISTRY_ENDPOINT: registry.outputs.loginServer
  AZURE_CONTAINER_REGISTRY_ID: registry.outputs.id
  DIFFLANE_DISPATCH: dispatch
  DIFFLANE_NAMESPACE: namespace
  DIFFLANE_API_HOST: apiHost
  DIFFLANE_API_CLIENT_ID: workloads.outputs.apiClientId
  DIFFLANE_WORKER_CLIENT_ID: workloads.outputs.workerClientId
  DIFFLANE_CONTROLLER_CLIENT_ID: workloads.outputs.controllerClientId
  DIFFLANE_KEDA_CLIENT_ID: workloads.outputs.kedaClientId
  DIFFLANE_AZURE_STORAGE_ACCOUNT_URL: storage.outputs.blobEndpoint
  DIFFLANE_AZURE_CONTAINER: container
  DIFFLANE_SERVICEBUS_NAMESPACE: serviceBus ? queues!.outputs.fqdn : ''
  DIFFLANE_SERVICEBUS_QUEUE_PREFIX: lanes.queuePrefix
  DIFFLANE_KEY_VAULT_NAME: vault.outputs.name
  DIFFLANE_APP_GATEWAY_SUBNET: network.outputs.appGatewayPrefix
  DIFFLANE_APP_GATEWAY_FQDN: gateway.outputs.publicFqdn
  DIFFLANE_FRONT_DOOR_HOST: enableFrontDoor ? frontDoor!.outputs.hostName : ''
  DIFFLANE_GRAFANA_NAME: monitoring.outputs.grafanaName
  DIFFLANE_CI_CLIENT_ID: empty(githubSubjects) ? '' : delivery!.outputs.clientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.appInsightsConnectionString
}

module publish 'modules/outputs.bicep' = {
  scope: group
  name: 'difflane-outputs'
  params: {
    values: published
  }
}

output AZURE_LOCATION string = published.AZURE_LOCATION
output AZURE_TENANT_ID string = published.AZURE_TENANT_ID
output AZURE_RESOURCE_GROUP string = published.AZURE_RESOURCE_GROUP
output AZURE_AKS_CLUSTER_NAME string = published.AZURE_AKS_CLUSTER_NAME
output AZURE_AKS_CLUSTER_ID string = published.AZURE_AKS_CLUSTER_ID
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = published.AZURE_CONTAINER_REGISTRY_ENDPOINT
output AZURE_CONTAINER_REGISTRY_ID string = published.AZURE_CONTAINER_REGISTRY_ID
output DIFFLANE_DISPATCH string = published.DIFFLANE_DISPATCH
output DIFFLANE_NAMESPACE string = published.DIFFLANE_NAMESPACE
output DIFFLANE_API_HOST string = published.DIFFLANE_API_HOST
output DIFFLANE_API_CLIENT_ID string = published.DIFFLANE_API_CLIENT_ID
output DIFFLANE_WORKER_CLIENT_ID string = published.DIFFLANE_WORKER_CLIENT_ID
output DIFFLANE_CONTROLLER_CLIENT_ID string = published.DIFFLANE_CONTROLLER_CLIENT_ID
output DIFFLANE_KEDA_CLIENT_ID string = published.DIFFLANE_KEDA_CLIENT_ID
output DIFFLANE_AZURE_STORAGE_ACCOUNT_URL string = published.DIFFLANE_AZURE_STORAGE_ACCOUNT_URL
output DIFFLANE_AZURE_CONTAINER string = published.DIFFLANE_AZURE_CONTAINER
output DIFFLANE_SERVICEBUS_NAMESPACE string = published.DIFFLANE_SERVICEBUS_NAMESPACE
output DIFFLANE_SERVICEBUS_QUEUE_PREFIX string = published.DIFFLANE_SERVICEBUS_QUEUE_PREFIX
output DIFFLANE_KEY_VAULT_NAME string = published.DIFFLANE_KEY_VAULT_NAME
output DIFFLANE_APP_GATEWAY_SUBNET string = published.DIFFLANE_APP_GATEWAY_SUBNET
output DIFFLANE_APP_GATEWAY_FQDN string = published.DIFFLANE_APP_GATEWAY_FQDN
output DIFFLANE_FRONT_DOOR_HOST string = published.DIFFLANE_FRONT_DOOR_HOST
output DIFFLANE_GRAFANA_NAME string = published.DIFFLANE_GRAFANA_NAME
output DIFFLANE_CI_CLIENT_ID string = published.DIFFLANE_CI_CLIENT_ID
output APPLICATIONINSIGHTS_CONNECTION_STRING string = published.APPLICATIONINSIGHTS_CONNECTION_STRING
