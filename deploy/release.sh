#!/usr/bin/env bash
# Roll one release of difflane out to the cluster of the current kubectl context, verify it, and
# roll back by itself when it does not hold (run by .github/workflows/deploy.yml).
#
#   deploy/release.sh current                      -> "API_IMAGE WORKER_IMAGE" now running
#   deploy/release.sh apply API_IMAGE WORKER_IMAGE -> write the overlay, apply, wait for rollouts
#   deploy/release.sh smoke                        -> difflane smoke against the environment's URL
#
# Needs: az (signed in), kubectl (context set), python3 with difflane installed for `smoke`, and
# RESOURCE_GROUP (the environment's resource group; its difflane-outputs deployment holds the
# Bicep outputs the overlay is written from). SMOKE_URL overrides https://<DIFFLANE_API_HOST>.
set -euo pipefail
cd "$(dirname "$0")/.."
NAMESPACE=difflane
OVERLAY=deploy/k8s/overlays/azd
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-15m}
: "${RESOURCE_GROUP:?set RESOURCE_GROUP to the environment resource group}"

outputs() {
    local file=$1
    az deployment group show --resource-group "$RESOURCE_GROUP" --name difflane-outputs \
        --query properties.outputs --output json >"$file"
}

case "${1:-}" in
current)
    api=$(kubectl -n "$NAMESPACE" get deployment difflane-api \
        -o jsonpath='{.spec.template.spec.containers[0].image}' 2>/dev/null || true)
    worker=$(kubectl -n "$NAMESPACE" get deployment difflane-api \
        -o jsonpath='{.metadata.annotations.difflane\.io/worker-image}' 2>/dev/null || true)
    echo "${api:-none} ${worker:-none}"
    ;;
apply)
    api=${2:?API image}
    worker=${3:?worker image}
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    outputs "$tmp/outputs.json"
    python3 deploy/azd_overlay.py --outputs "$tmp/outputs.json" --out "$OVERLAY" \
        --api-image "$api" --worker-image "$worker"
    kubectl kustomize "$OVERLAY" >"$tmp/release.yaml"
    # Server-side dry run first: a manifest the API server refuses changes nothing.
    kubectl apply --server-side --dry-run=server -f "$tmp/release.yaml" >/dev/null
    kubectl apply --server-side -f "$tmp/release.yaml"
    # Every Deployment of the release (API, controller or Service Bus workers) must roll out.
    for deployment in $(kubectl -n "$NAMESPACE" get deployments -l app.kubernetes.io/name=difflane -o name); do
        kubectl -n "$NAMESPACE" rollout status "$deployment" --timeout "$ROLLOUT_TIMEOUT"
    done
    ;;
smoke)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    outputs "$tmp/outputs.json"
    host=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["values"]["value"]["DIFFLANE_API_HOST"])' "$tmp/outputs.json")
    # A token for the API's audience, issued to the signed-in (OIDC) identity: nothing stored.
    az account get-access-token --resource "${SMOKE_AUDIENCE:-api://difflane}" --query accessToken --output tsv >"$tmp/token"
    difflane smoke --url "${SMOKE_URL:-https://$host}" --token-file "$tmp/token"
    ;;
*)
    echo "usage: $0 current | apply API_IMAGE WORKER_IMAGE | smoke" >&2
    exit 2
    ;;
esac
