// The person (or group) who ran `azd up`: cluster admin through Entra RBAC (local accounts are
// off, so this is the only way in at first) and certificates officer on the vault, to import
// the TLS certificate.

param principalId string
@allowed(['User', 'Group', 'ServicePrincipal'])
param principalType string
param clusterName string
param keyVaultName string

resource cluster 'Microsoft.ContainerService/managedClusters@2024-09-01' existing = {
  name: clusterName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

var clusterAdmin = 'b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b' // Azure Kubernetes Service RBAC Cluster Admin
var certificatesOfficer = 'a4417e6f-fecd-4de8-b567-7b0420556985' // Key Vault Certificates Officer

resource admin 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: cluster
  name: guid(cluster.id, principalId, clusterAdmin)
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', clusterAdmin)
  }
}

resource certificates 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, principalId, certificatesOfficer)
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', certificatesOfficer)
  }
}
