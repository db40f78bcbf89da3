// Blob Storage for job records and results (one container, as difflane's Azure store lays them
// out: <tenant>/jobs/..., outputs/<job>/...; see src/difflane/store/azure_layout.py). Entra ID
// only (shared keys off), no public network, a private endpoint, and a lifecycle rule that
// expires results after resultRetentionDays.

param location string
param tags object
param name string
param container string
param resultRetentionDays int
param subnetId string
param privateDnsZoneId string
param logAnalyticsId string

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_GZRS' } // zone- and geo-redundant: job records outlive a region's loss
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Disabled'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    isHnsEnabled: false // difflane's conditional writes need flat-namespace Blob semantics
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
    }
    encryption: {
      requireInfrastructureEncryption: true
      keySource: 'Microsoft.Storage'
      services: {
        blob: { enabled: true, keyType: 'Account' }
        file: { enabled: true, keyType: 'Account' }
        queue: { enabled: true, keyType: 'Account' }
        table: { enabled: true, keyType: 'Account' }
      }
    }
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: { enabled: true, days: 7 }
    containerDeleteRetentionPolicy: { enabled: true, days: 7 }
  }
}

resource jobs 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: container
  properties: {
    publicAccess: 'None'
  }
}

// Results (outputs/<job>/<n>.png) expire; records stay (they are small and answer "what happened").
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-results'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: ['blockBlob']
              prefixMatch: ['${container}/outputs/']
            }
            actions: {
              baseBlob: { delete: { daysAfterModificationGreaterThan: resultRetentionDays } }
            }
          }
        }
      ]
    }
  }
}

module endpoint 'private-endpoint.bicep' = {
  name: '${name}-blob-pe'
  params: {
    location: location
    tags: tags
    name: '${name}-blob-pe'
    subnetId: subnetId
    targetId: account.id
    groupId: 'blob'
    privateDnsZoneId: privateDnsZoneId
  }
}

resource blobAudit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  scope: blobs
  name: 'audit'
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      { category: 'StorageWrite', enabled: true }
      { category: 'StorageDelete', enabled: true }
    ]
  }
}

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output containerId string = jobs.id
