// One user-assigned managed identity per workload. Each is federated with exactly one Kubernetes
// service account (federation.bicep, once the cluster's OIDC issuer exists); the roles are granted
// where the resources are (main.bicep, servicebus.bicep), each the least that workload needs.

param location string
param tags object
param name string
@description('Create the controller identity (the kubernetes shape runs difflane controller).')
param controller bool
@description('Create the KEDA identity (the servicebus shape scales workers with KEDA).')
param keda bool

resource api 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-api'
  location: location
  tags: tags
}

resource worker 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-worker'
  location: location
  tags: tags
}

resource controllerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (controller) {
  name: '${name}-controller'
  location: location
  tags: tags
}

resource kedaIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (keda) {
  name: '${name}-keda'
  location: location
  tags: tags
}

output apiName string = api.name
output apiClientId string = api.properties.clientId
output apiPrincipalId string = api.properties.principalId
output workerName string = worker.name
output workerClientId string = worker.properties.clientId
output workerPrincipalId string = worker.properties.principalId
output controllerName string = controller ? controllerIdentity.name : ''
output controllerClientId string = controller ? controllerIdentity!.properties.clientId : ''
output controllerPrincipalId string = controller ? controllerIdentity!.properties.principalId : ''
output kedaName string = keda ? kedaIdentity.name : ''
output kedaClientId string = keda ? kedaIdentity!.properties.clientId : ''
output kedaPrincipalId string = keda ? kedaIdentity!.properties.principalId : ''
