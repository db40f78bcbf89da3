#!/usr/bin/env bash
# Deploy infra/main.bicep for one environment with its parameter file (the infra workflow's
# equivalent of `azd provision`), then do what the postprovision hook does from the outputs.
#   infra/hooks/deploy-environment.sh dev|prod
set -euo pipefail
cd "$(dirname "$0")/../.."
environment=${1:?dev or prod}
parameters=infra/env/$environment.parameters.json
location=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["parameters"]["location"]["value"])' "$parameters")
name=difflane-$environment

az deployment sub what-if --name "$name" --location "$location" \
    --template-file infra/main.bicep --parameters "@$parameters"
az deployment sub create --name "$name" --location "$location" \
    --template-file infra/main.bicep --parameters "@$parameters" --output none

# The outputs, as azd would export them, for the shared post-provision steps.
eval "$(az deployment sub show --name "$name" --query properties.outputs --output json |
    python3 -c 'import json,shlex,sys
for k, v in json.load(sys.stdin).items():
    print(f"export {k.upper()}={shlex.quote(str(v[\"value\"]))}")')"
infra/hooks/postprovision.sh
