// Production is promoted from the dev registry by digest (`az acr import`, which keeps the
// manifest digest): the production CI identity may read that one registry.

param registryName string
param principalId string

resource registry 'Microsoft.ContainerRegistry/registries@2023-11-01-preview' existing = {
  name: registryName
}

var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource readsSource 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: registry
  name: guid(registry.id, principalId, acrPull)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
  }
}
