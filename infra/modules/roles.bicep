// Role assignments on the data plane, each the least its holder needs (docs/howto/deploy-aks.md
// has the table): workloads on the blob container and the vault, the kubelet on the registry,
// AGIC on its gateway. Service Bus roles are in servicebus.bicep, CI's in delivery.bicep.

param storageAccountName string
param containerName string
param keyVaultName string
param registryName string
param appGatewayName string
param appGatewaySubnetName string
param vnetName string
param apiPrincipalId string
param workerPrincipalId string
@description('Empty when the shape has no controller.')
param controllerPrincipalId string
param kubeletPrincipalId string
param agicPrincipalId string

var blobContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor
var blobDelegator = 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a' // Storage Blob Delegator
var secretsUser = '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'
var contributor = 'b24988ac-6180-42a0-ab88-20f7382dd24c'
var reader = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
var networkContributor = '4d97b98b-1d4f-4787-a291-c67834d212e7'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: containerName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-11-01-preview' existing = {
  name: registryName
}

resource gateway 'Microsoft.Network/applicationGateways@2024-05-01' existing = {
  name: appGatewayName
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' existing = {
  name: vnetName
}

resource gatewaySubnet 'Microsoft.Network/virtualNetworks/subnets@2024-05-01' existing = {
  parent: vnet
  name: appGatewaySubnetName
}

// Records, idempotency keys, the outbox, results: the container only, not the account.
var controllerWriters = empty(controllerPrincipalId) ? [] : [controllerPrincipalId]
var blobWriters = concat([apiPrincipalId, workerPrincipalId], controllerWriters)

resource writesBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principal in blobWriters: {
    scope: container
    name: guid(container.id, principal, blobContributor)
    properties: {
      principalId: principal
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobContributor)
    }
  }
]

// User delegation keys (signed result URLs) exist only at account scope.
resource signsResultUrls 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: account
  name: guid(account.id, apiPrincipalId, blobDelegator)
  properties: {
    principalId: apiPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDelegator)
  }
}

// The API pod mounts the TLS certificate through the Secrets Store CSI driver (SecretProviderClass
// difflane-tls, with the API's workload identity) so that the Ingress's TLS Secret is synced.
resource readsTls 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, apiPrincipalId, secretsUser)
  properties: {
    principalId: apiPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUser)
  }
}

resource pullsImages 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: registry
  name: guid(registry.id, kubeletPrincipalId, acrPull)
  properties: {
    principalId: kubeletPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
  }
}

// AGIC rewrites the gateway's configuration, reads the resource group, joins the gateway subnet.
resource agicGateway 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: gateway
  name: guid(gateway.id, agicPrincipalId, contributor)
  properties: {
    principalId: agicPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', contributor)
  }
}

resource agicReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, agicPrincipalId, reader)
  properties: {
    principalId: agicPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', reader)
  }
}

resource agicSubnet 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: gatewaySubnet
  name: guid(gatewaySubnet.id, agicPrincipalId, networkContributor)
  properties: {
    principalId: agicPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', networkContributor)
  }
}
