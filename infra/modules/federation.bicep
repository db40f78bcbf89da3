// The federated credentials: each workload identity trusts tokens of exactly one service account,
// issued by this cluster's OIDC issuer. Names and namespaces must match deploy/k8s (checked by
// tests/unit/test_infra_consistency.py).

param oidcIssuerUrl string
@description('Where difflane runs: the namespace of deploy/k8s/base/namespace.yaml.')
param namespace string
param apiIdentityName string
param workerIdentityName string
@description('Empty when the shape has no controller.')
param controllerIdentityName string
@description('Empty when the shape has no KEDA.')
param kedaIdentityName string

var audiences = ['api://AzureADTokenExchange']

resource api 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: apiIdentityName
}

resource worker 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: workerIdentityName
}

resource controller 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = if (!empty(controllerIdentityName)) {
  name: controllerIdentityName
}

resource keda 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = if (!empty(kedaIdentityName)) {
  name: kedaIdentityName
}

resource apiFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: api
  name: 'kubernetes'
  properties: {
    issuer: oidcIssuerUrl
    subject: 'system:serviceaccount:${namespace}:difflane-api'
    audiences: audiences
  }
}

resource workerFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: worker
  name: 'kubernetes'
  properties: {
    issuer: oidcIssuerUrl
    subject: 'system:serviceaccount:${namespace}:difflane-worker'
    audiences: audiences
  }
}

resource controllerFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = if (!empty(controllerIdentityName)) {
  parent: controller
  name: 'kubernetes'
  properties: {
    issuer: oidcIssuerUrl
    subject: 'system:serviceaccount:${namespace}:difflane-controller'
    audiences: audiences
  }
}

// The AKS KEDA add-on runs its operator as kube-system/keda-operator; the TriggerAuthentication's
// azure-workload provider makes the operator get a token for this identity.
resource kedaFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = if (!empty(kedaIdentityName)) {
  parent: keda
  name: 'kubernetes'
  properties: {
    issuer: oidcIssuerUrl
    subject: 'system:serviceaccount:kube-system:keda-operator'
    audiences: audiences
  }
}
