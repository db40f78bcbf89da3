// Operator access: Azure Bastion (Standard, native client tunnelling), the way into a private
// cluster's network without a public SSH endpoint (`az aks bastion`, or a jump VM you add).

param location string
param tags object
param name string
param subnetId string

resource ip 'Microsoft.Network/publicIPAddresses@2024-05-01' = {
  name: '${name}-ip'
  location: location
  tags: tags
  sku: { name: 'Standard' }
  zones: ['1', '2', '3']
  properties: {
    publicIPAllocationMethod: 'Static'
  }
}

resource bastion 'Microsoft.Network/bastionHosts@2024-05-01' = {
  name: name
  location: location
  tags: tags
  sku: { name: 'Standard' }
  properties: {
    enableTunneling: true
    enableIpConnect: true
    disableCopyPaste: false
    ipConfigurations: [
      {
        name: 'default'
        properties: {
          subnet: { id: subnetId }
          publicIPAddress: { id: ip.id }
        }
      }
    ]
  }
}
