// Azure Service Bus for the servicebus shape: Entra ID only (local auth off), one queue per lane
// (the names come from infra/generated/lanes.json, written from the lanes file), each with
// duplicate detection (the first message of a job carries the job id), a lock the worker renews,
// and a max delivery count above the lanes' max_attempts so difflane, not the service,
// dead-letters. Premium gets a private endpoint; Standard cannot have one.

param location string
param tags object
param name string
@allowed(['Standard', 'Premium'])
param sku string
param queues array
param subnetId string
param privateDnsZoneId string
param logAnalyticsId string
param apiPrincipalId string
param workerPrincipalId string
param kedaPrincipalId string

var premium = sku == 'Premium'

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
    tier: sku
    capacity: premium ? 1 : null
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    // Standard has no private endpoint: its endpoint stays public, reachable with Entra ID tokens only.
    publicNetworkAccess: premium ? 'Disabled' : 'Enabled'
    zoneRedundant: premium
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = [
  for q in queues: {
    parent: namespace
    name: q
    properties: {
      requiresDuplicateDetection: true // fixed at creation: it cannot be turned on later
      duplicateDetectionHistoryTimeWindow: 'PT30M'
      lockDuration: 'PT1M' // >= DIFFLANE_LEASE_SECONDS (30); AutoLockRenewer extends it
      maxDeliveryCount: 10 // above every lane's max_attempts (3): difflane dead-letters itself
      deadLetteringOnMessageExpiration: true
      defaultMessageTimeToLive: 'P1D'
      requiresSession: false
      enablePartitioning: false
    }
  }
]

var sender = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39' // Azure Service Bus Data Sender
var receiver = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0' // Azure Service Bus Data Receiver
var owner = '090c5cfd-751d-490a-894a-3ce6f1109419' // Azure Service Bus Data Owner

// The API sends one message per job.
resource apiSends 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (q, i) in queues: {
    scope: queue[i]
    name: guid(queue[i].id, apiPrincipalId, sender)
    properties: {
      principalId: apiPrincipalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', sender)
    }
  }
]

// Workers receive and settle, and send the scheduled copy of a delayed retry.
resource workerReceives 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (q, i) in queues: {
    scope: queue[i]
    name: guid(queue[i].id, workerPrincipalId, receiver)
    properties: {
      principalId: workerPrincipalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', receiver)
    }
  }
]

resource workerSends 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (q, i) in queues: {
    scope: queue[i]
    name: guid(queue[i].id, workerPrincipalId, sender)
    properties: {
      principalId: workerPrincipalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', sender)
    }
  }
]

// KEDA's scaler reads queue counts through the management API, which needs Manage rights:
// Data Owner is the only built-in role with them. It is scoped to each queue, and only KEDA has it.
resource kedaReadsCounts 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (q, i) in queues: {
    scope: queue[i]
    name: guid(queue[i].id, kedaPrincipalId, owner)
    properties: {
      principalId: kedaPrincipalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', owner)
    }
  }
]

module endpoint 'private-endpoint.bicep' = if (premium) {
  name: '${name}-pe'
  params: {
    location: location
    tags: tags
    name: '${name}-pe'
    subnetId: subnetId
    targetId: namespace.id
    groupId: 'namespace'
    privateDnsZoneId: privateDnsZoneId
  }
}

resource audit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  scope: namespace
  name: 'audit'
  properties: {
    workspaceId: logAnalyticsId
    logs: [{ categoryGroup: 'allLogs', enabled: true }]
  }
}

output id string = namespace.id
output name string = namespace.name
output fqdn string = '${namespace.name}.servicebus.windows.net'
