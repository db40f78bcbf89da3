// Re-emits main.bicep's outputs as a deployment of the resource group ("difflane-outputs"), so CI
// reads them with Reader on the group alone (`az deployment group show`) and writes the overlay
// with deploy/azd_overlay.py --outputs: the same values azd hands its hooks.

param values object

output values object = values
