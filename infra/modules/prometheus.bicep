// Managed Prometheus for the cluster: the collection endpoint and rule that send what the AKS
// metrics add-on (ama-metrics) scrapes, PodMonitors included, to the Azure Monitor workspace.

param location string
param tags object
param name string
param clusterName string
param prometheusId string

resource endpoint 'Microsoft.Insights/dataCollectionEndpoints@2023-03-11' = {
  name: '${name}-prometheus-dce'
  location: location
  tags: tags
  kind: 'Linux'
  properties: {
    networkAcls: { publicNetworkAccess: 'Enabled' }
  }
}

resource rule 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: '${name}-prometheus-dcr'
  location: location
  tags: tags
  kind: 'Linux'
  properties: {
    dataCollectionEndpointId: endpoint.id
    dataSources: {
      prometheusForwarder: [
        {
          name: 'PrometheusDataSource'
          streams: ['Microsoft-PrometheusMetrics']
          labelIncludeFilter: {}
        }
      ]
    }
    destinations: {
      monitoringAccounts: [{ name: 'workspace', accountResourceId: prometheusId }]
    }
    dataFlows: [{ streams: ['Microsoft-PrometheusMetrics'], destinations: ['workspace'] }]
  }
}

resource cluster 'Microsoft.ContainerService/managedClusters@2024-09-01' existing = {
  name: clusterName
}

resource association 'Microsoft.Insights/dataCollectionRuleAssociations@2023-03-11' = {
  scope: cluster
  name: '${name}-prometheus'
  properties: {
    dataCollectionRuleId: rule.id
  }
}
