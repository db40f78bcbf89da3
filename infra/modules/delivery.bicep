// The identity GitHub Actions signs in as (azure/login with OpenID Connect: no secret exists).
// It trusts exactly the subjects given (e.g. repo:ORG/REPO:environment:prod) and may push images
// and deploy into the difflane namespace, nothing else. Infrastructure changes run under a
// separate, bootstrapped identity (docs/howto/deploy-aks.md).

param location string
param tags object
param name string
@description('GitHub OIDC subjects allowed to sign in, e.g. repo:ORG/REPO:environment:dev.')
param subjects array
param registryName string
param clusterName string
@description('Production: the identity imports images by digest from the dev registry (az acr import).')
param importsImages bool

resource ci 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

// One at a time: Azure refuses concurrent writes of federated credentials on one identity.
@batchSize(1)
resource trust 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = [
  for (subject, i) in subjects: {
    parent: ci
    name: 'github-${i}'
    properties: {
      issuer: 'https://token.actions.githubusercontent.com'
      subject: subject
      audiences: ['api://AzureADTokenExchange']
    }
  }
]

resource registry 'Microsoft.ContainerRegistry/registries@2023-11-01-preview' existing = {
  name: registryName
}

resource cluster 'Microsoft.ContainerService/managedClusters@2024-09-01' existing = {
  name: clusterName
}

var acrPush = '8311e382-0749-4cb8-b61a-304f252e45ec'
var reader = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
var clusterUser = '4abbcc35-e782-43d8-92c5-2d3f1bd2253f' // Azure Kubernetes Service Cluster User Role

resource push 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: registry
  name: guid(registry.id, ci.id, acrPush)
  properties: {
    principalId: ci.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPush)
  }
}

resource kubeconfig 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: cluster
  name: guid(cluster.id, ci.id, clusterUser)
  properties: {
    principalId: ci.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', clusterUser)
  }
}

// deploy/release.sh reads the Bicep outputs (the difflane-outputs deployment) of this group.
resource readsOutputs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, ci.id, reader)
  properties: {
    principalId: ci.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', reader)
  }
}

// `az acr import` needs importImage on the target; no narrower built-in role than Contributor
// carries it, so a custom role with just that action (and read).
resource importerRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (importsImages) {
  name: guid(resourceGroup().id, 'difflane-image-importer')
  properties: {
    roleName: 'difflane image importer (${resourceGroup().name})'
    description: 'Import images into the registry by digest (promotion), nothing else.'
    type: 'CustomRole'
    assignableScopes: [resourceGroup().id]
    permissions: [
      {
        actions: [
          'Microsoft.ContainerRegistry/registries/read'
          'Microsoft.ContainerRegistry/registries/importImage/action'
        ]
        notActions: []
      }
    ]
  }
}

resource imports 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (importsImages) {
  scope: registry
  name: guid(registry.id, ci.id, 'difflane-image-importer')
  properties: {
    principalId: ci.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: importerRole.id
  }
}

// Kubernetes rights come from "Azure Kubernetes Service RBAC Writer" scoped to the difflane
// namespace (<cluster id>/namespaces/<namespace>), a scope ARM templates cannot name: the
// postprovision hook grants it (infra/hooks/postprovision.sh), as does the infra workflow.

output clientId string = ci.properties.clientId
output principalId string = ci.properties.principalId
