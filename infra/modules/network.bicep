// The virtual network: one subnet per node pool (Azure CNI gives pods addresses from their
// node's subnet), Application Gateway, private endpoints and Bastion; private DNS zones for
// every private endpoint, linked to the network so pods resolve the private addresses.

param location string
param tags object
param name string

@description('Zones of the private endpoints this deployment creates (privatelink.*).')
param privateDnsZoneNames array

@description('Front Door is in front of Application Gateway: admit only its backend service tag.')
param frontDoorOnly bool

// Keep appGatewayPrefix equal to the ipBlock of deploy/k8s/base/networkpolicies.yaml
// (api-from-application-gateway): AGIC sends traffic from this subnet straight to pod IPs.
// tests/unit/test_infra_consistency.py holds the two together.
var addressSpace = '10.224.0.0/12'
var subnets = {
  system: '10.224.0.0/24'
  appGateway: '10.225.0.0/24'
  cpu: '10.226.0.0/20'
  gpu: '10.227.0.0/22'
  privateEndpoints: '10.228.0.0/24'
  bastion: '10.228.1.0/26'
}

resource nodesNsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${name}-nodes-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource endpointsNsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${name}-pe-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

// Application Gateway v2 needs its infrastructure ports (65200-65535) open from GatewayManager,
// and the client ports from the internet (or from Front Door only, when Front Door is used).
resource appGatewayNsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${name}-agw-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'gateway-manager'
        properties: {
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'GatewayManager'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '65200-65535'
        }
      }
      {
        name: 'https-in'
        properties: {
          priority: 110
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: frontDoorOnly ? 'AzureFrontDoor.Backend' : 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRanges: ['443', '80']
        }
      }
      {
        name: 'load-balancer'
        properties: {
          priority: 120
          direction: 'Inbound'
          access: 'Allow'
          protocol: '*'
          sourceAddressPrefix: 'AzureLoadBalancer'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

// Azure Bastion's documented minimum rule set (https only in, SSH/RDP to the network out).
resource bastionNsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${name}-bastion-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'https-in'
        properties: {
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '443'
        }
      }
      {
        name: 'gateway-manager-in'
        properties: {
          priority: 110
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'GatewayManager'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '443'
        }
      }
      {
        name: 'load-balancer-in'
        properties: {
          priority: 120
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'AzureLoadBalancer'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '443'
        }
      }
      {
        name: 'bastion-host-in'
        properties: {
          priority: 130
          direction: 'Inbound'
          access: 'Allow'
          protocol: '*'
          sourceAddressPrefix: 'VirtualNetwork'
          sourcePortRange: '*'
          destinationAddressPrefix: 'VirtualNetwork'
          destinationPortRanges: ['8080', '5701']
        }
      }
      {
        name: 'ssh-rdp-out'
        properties: {
          priority: 100
          direction: 'Outbound'
          access: 'Allow'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: 'VirtualNetwork'
          destinationPortRanges: ['22', '3389', '443']
        }
      }
      {
        name: 'azure-cloud-out'
        properties: {
          priority: 110
          direction: 'Outbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: 'AzureCloud'
          destinationPortRange: '443'
        }
      }
      {
        name: 'bastion-host-out'
        properties: {
          priority: 120
          direction: 'Outbound'
          access: 'Allow'
          protocol: '*'
          sourceAddressPrefix: 'VirtualNetwork'
          sourcePortRange: '*'
          destinationAddressPrefix: 'VirtualNetwork'
          destinationPortRanges: ['8080', '5701']
        }
      }
      {
        name: 'session-info-out'
        properties: {
          priority: 130
          direction: 'Outbound'
          access: 'Allow'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: 'Internet'
          destinationPortRange: '80'
        }
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [addressSpace]
    }
    subnets: [
      {
        name: 'system'
        properties: {
          addressPrefix: subnets.system
          networkSecurityGroup: { id: nodesNsg.id }
        }
      }
      {
        name: 'cpu'
        properties: {
          addressPrefix: subnets.cpu
          networkSecurityGroup: { id: nodesNsg.id }
        }
      }
      {
        name: 'gpu'
        properties: {
          addressPrefix: subnets.gpu
          networkSecurityGroup: { id: nodesNsg.id }
        }
      }
      {
        name: 'app-gateway'
        properties: {
          addressPrefix: subnets.appGateway
          networkSecurityGroup: { id: appGatewayNsg.id }
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: subnets.privateEndpoints
          networkSecurityGroup: { id: endpointsNsg.id }
          privateEndpointNetworkPolicies: 'Enabled'
        }
      }
      {
        name: 'AzureBastionSubnet' // the name Azure Bastion requires
        properties: {
          addressPrefix: subnets.bastion
          networkSecurityGroup: { id: bastionNsg.id }
        }
      }
    ]
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2024-06-01' = [
  for zone in privateDnsZoneNames: {
    name: zone
    location: 'global'
    tags: tags
  }
]

resource links 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [
  for (zone, i) in privateDnsZoneNames: {
    parent: zones[i]
    name: '${name}-link'
    location: 'global'
    tags: tags
    properties: {
      registrationEnabled: false
      virtualNetwork: { id: vnet.id }
    }
  }
]

output vnetId string = vnet.id
output systemSubnetId string = '${vnet.id}/subnets/system'
output cpuSubnetId string = '${vnet.id}/subnets/cpu'
output gpuSubnetId string = '${vnet.id}/subnets/gpu'
output appGatewaySubnetId string = '${vnet.id}/subnets/app-gateway'
output privateEndpointSubnetId string = '${vnet.id}/subnets/private-endpoints'
output bastionSubnetId string = '${vnet.id}/subnets/AzureBastionSubnet'
output appGatewayPrefix string = subnets.appGateway
output privateDnsZoneIds array = [for (zone, i) in privateDnsZoneNames: zones[i].id]
