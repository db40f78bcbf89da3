// Telemetry: Log Analytics (Container Insights, diagnostics), workspace-based Application
// Insights (traces when DIFFLANE's connection string is set), an Azure Monitor workspace for
// Managed Prometheus, and Managed Grafana reading it. Dashboards are imported after provisioning
// by infra/hooks/postprovision.sh (ARM has no resource for a Grafana dashboard).

param location string
param tags object
param name string
param retentionDays int
@description('Object id of the person or group who administers Grafana (azd: the signed-in user).')
param grafanaAdminPrincipalId string
@allowed(['User', 'Group', 'ServicePrincipal'])
param grafanaAdminPrincipalType string = 'User'

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${name}-logs'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: retentionDays
    features: { disableLocalAuth: true }
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${name}-insights'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true // ingestion with Entra ID tokens only
  }
}

resource prometheus 'Microsoft.Monitor/accounts@2023-04-03' = {
  name: '${name}-prometheus'
  location: location
  tags: tags
}

resource grafana 'Microsoft.Dashboard/grafana@2023-09-01' = {
  name: take('${name}-grafana', 23)
  location: location
  tags: tags
  sku: { name: 'Standard' }
  identity: { type: 'SystemAssigned' }
  properties: {
    apiKey: 'Disabled'
    deterministicOutboundIP: 'Disabled'
    publicNetworkAccess: 'Enabled' // people open it in a browser; sign-in is Entra ID only
    zoneRedundancy: 'Disabled'
    grafanaIntegrations: {
      azureMonitorWorkspaceIntegrations: [{ azureMonitorWorkspaceResourceId: prometheus.id }]
    }
  }
}

var monitoringDataReader = 'b0d8363b-8ddd-447d-831f-62ca05bff136'
var grafanaAdmin = '22926164-76b3-42b3-bc55-97df8dab3e41'

// Grafana queries Prometheus with its own identity.
resource grafanaReadsPrometheus 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: prometheus
  name: guid(prometheus.id, grafana.id, monitoringDataReader)
  properties: {
    principalId: grafana.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringDataReader)
  }
}

resource grafanaAdmins 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(grafanaAdminPrincipalId)) {
  scope: grafana
  name: guid(grafana.id, grafanaAdminPrincipalId, grafanaAdmin)
  properties: {
    principalId: grafanaAdminPrincipalId
    principalType: grafanaAdminPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', grafanaAdmin)
  }
}

output logAnalyticsId string = logs.id
output appInsightsConnectionString string = insights.properties.ConnectionString
output appInsightsId string = insights.id
output prometheusId string = prometheus.id
output grafanaName string = grafana.name
output grafanaEndpoint string = grafana.properties.endpoint
