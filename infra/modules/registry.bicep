// The container registry: Premium (private endpoints, retention, trust policies), no admin user,
// no anonymous pull. Images are pushed by CI through OIDC (AcrPush for the CI identity) and pulled
// by the kubelet identity (AcrPull), both granted in main.bicep.

param location string
param tags object
param name string
param subnetId string
param privateDnsZoneId string
@description('Allow pushes from outside the network (GitHub-hosted runners). Off: push from a runner inside the VNet.')
param publicNetworkAccess bool

resource registry 'Microsoft.ContainerRegistry/registries@2023-11-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: { name: 'Premium' }
  // checkov:skip=CKV_AZURE_139: public access is a parameter, off in production (env/prod); dev turns it on so GitHub-hosted runners can push, with RBAC-only auth (no admin user, no anonymous pull).
  // checkov:skip=CKV_AZURE_166: quarantine holds every image until a scanner releases it, and none runs in this pipeline; images are scanned by Defender for Containers and carry SBOM and provenance attestations.
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    dataEndpointEnabled: true // pulls go to a dedicated, private-endpoint-reachable data endpoint
    publicNetworkAccess: publicNetworkAccess ? 'Enabled' : 'Disabled'
    networkRuleBypassOptions: 'AzureServices'
    zoneRedundancy: 'Enabled'
    policies: {
      quarantinePolicy: { status: 'disabled' }
      retentionPolicy: { status: 'enabled', days: 30 } // untagged manifests only
      exportPolicy: { status: publicNetworkAccess ? 'enabled' : 'disabled' }
      trustPolicy: { status: 'disabled', type: 'Notary' } // signatures are attached as OCI referrers instead
    }
  }
}

module endpoint 'private-endpoint.bicep' = {
  name: '${name}-pe'
  params: {
    location: location
    tags: tags
    name: '${name}-pe'
    subnetId: subnetId
    targetId: registry.id
    groupId: 'registry'
    privateDnsZoneId: privateDnsZoneId
  }
}

output id string = registry.id
output name string = registry.name
output loginServer string = registry.properties.loginServer
