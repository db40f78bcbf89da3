// Application Gateway WAF_v2 in front of the API, with a WAF policy in Prevention mode and TLS 1.2+.
// AGIC (the AKS add-on) owns the listeners, pools and rules once the Ingress exists; this module
// creates the gateway with a placeholder configuration AGIC replaces, and, when the certificate
// has been imported into Key Vault, installs it from there (tlsCertificateName).
//
// Caution: a later deployment of this module rewrites the gateway's configuration, which AGIC
// then restores within a minute; run the infra workflow in a change window.

param location string
param tags object
param name string
param subnetId string
param keyVaultName string
param keyVaultUri string
@description('Name of the Key Vault certificate (empty until it has been imported).')
param tlsCertificateName string
param logAnalyticsId string
@description('The Front Door profile id (X-Azure-FDID) when Front Door is in front; empty otherwise.')
param frontDoorId string

var tls = !empty(tlsCertificateName)

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-identity'
  location: location
  tags: tags
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

var secretsUser = '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User

// A certificate is read as the secret of the same name: the gateway needs only that.
resource readsCertificate 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, identity.id, secretsUser)
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUser)
  }
}

resource ip 'Microsoft.Network/publicIPAddresses@2024-05-01' = {
  name: '${name}-ip'
  location: location
  tags: tags
  sku: { name: 'Standard' }
  zones: ['1', '2', '3']
  properties: {
    publicIPAllocationMethod: 'Static'
    dnsSettings: { domainNameLabel: name }
  }
}

// Behind Front Door, only requests carrying this profile's id pass (the NSG admits only the
// AzureFrontDoor.Backend service tag; the header tells this profile from other customers').
var frontDoorRules = [
  {
    name: 'OnlyOurFrontDoor'
    priority: 1
    ruleType: 'MatchRule'
    action: 'Block'
    matchConditions: [
      {
        matchVariables: [{ variableName: 'RequestHeaders', selector: 'X-Azure-FDID' }]
        operator: 'Equal'
        negationConditon: true
        matchValues: [frontDoorId]
      }
    ]
  }
]

resource policy 'Microsoft.Network/ApplicationGatewayWebApplicationFirewallPolicies@2024-05-01' = {
  name: '${name}-waf'
  location: location
  tags: tags
  properties: {
    policySettings: {
      state: 'Enabled'
      mode: 'Prevention'
      requestBodyCheck: true
      maxRequestBodySizeInKb: 128 // above DIFFLANE_MAX_BODY_BYTES (64 KiB): the API answers 413 itself
      fileUploadLimitInMb: 1
    }
    managedRules: {
      managedRuleSets: [
        { ruleSetType: 'OWASP', ruleSetVersion: '3.2' }
        { ruleSetType: 'Microsoft_BotManagerRuleSet', ruleSetVersion: '1.0' }
      ]
    }
    customRules: empty(frontDoorId) ? [] : frontDoorRules
  }
}

var certificates = [
  { name: tlsCertificateName, properties: { keyVaultSecretId: '${keyVaultUri}secrets/${tlsCertificateName}' } }
]
var gatewayId = resourceId('Microsoft.Network/applicationGateways', name)

resource gateway 'Microsoft.Network/applicationGateways@2024-05-01' = {
  name: name
  location: location
  tags: tags
  zones: ['1', '2', '3']
  dependsOn: [readsCertificate]
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    sku: { name: 'WAF_v2', tier: 'WAF_v2' }
    autoscaleConfiguration: { minCapacity: 1, maxCapacity: 10 }
    firewallPolicy: { id: policy.id }
    enableHttp2: true
    sslPolicy: {
      policyType: 'Predefined'
      policyName: 'AppGwSslPolicy20220101S' // TLS 1.2 and 1.3 only
    }
    gatewayIPConfigurations: [
      { name: 'gateway', properties: { subnet: { id: subnetId } } }
    ]
    frontendIPConfigurations: [
      { name: 'public', properties: { publicIPAddress: { id: ip.id } } }
    ]
    frontendPorts: [
      { name: 'https', properties: { port: 443 } }
      { name: 'http', properties: { port: 80 } }
    ]
    sslCertificates: tls ? certificates : []
    backendAddressPools: [{ name: 'placeholder' }]
    backendHttpSettingsCollection: [
      {
        name: 'placeholder'
        properties: { port: 80, protocol: 'Http', requestTimeout: 60, cookieBasedAffinity: 'Disabled' }
      }
    ]
    httpListeners: [
      {
        name: 'placeholder'
        properties: {
          frontendIPConfiguration: { id: '${gatewayId}/frontendIPConfigurations/public' }
          frontendPort: { id: '${gatewayId}/frontendPorts/${tls ? 'https' : 'http'}' }
          protocol: tls ? 'Https' : 'Http'
          sslCertificate: tls ? { id: '${gatewayId}/sslCertificates/${tlsCertificateName}' } : null
        }
      }
    ]
    requestRoutingRules: [
      {
        name: 'placeholder'
        properties: {
          ruleType: 'Basic'
          priority: 1000
          httpListener: { id: '${gatewayId}/httpListeners/placeholder' }
          backendAddressPool: { id: '${gatewayId}/backendAddressPools/placeholder' }
          backendHttpSettings: { id: '${gatewayId}/backendHttpSettingsCollection/placeholder' }
        }
      }
    ]
  }
}

resource audit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  scope: gateway
  name: 'audit'
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      { category: 'ApplicationGatewayAccessLog', enabled: true }
      { category: 'ApplicationGatewayFirewallLog', enabled: true }
    ]
  }
}

output id string = gateway.id
output name string = gateway.name
output publicFqdn string = ip.properties.dnsSettings.fqdn
output publicIp string = ip.properties.ipAddress
