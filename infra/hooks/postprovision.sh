#!/bin/sh
# azd postprovision hook. azd exports the Bicep outputs as environment variables; from them:
#   1. write deploy/k8s/overlays/azd (identity client ids, storage, Service Bus, Key Vault, ...);
#   2. grant the CI identity "Azure Kubernetes Service RBAC Writer" on the difflane namespace only
#      (a scope ARM templates cannot name);
#   3. import the Grafana dashboards under deploy/monitoring/dashboards, when there are any.
set -eu
python3 deploy/azd_overlay.py

if [ -n "${DIFFLANE_CI_CLIENT_ID:-}" ]; then
    az role assignment create --only-show-errors \
        --assignee "$DIFFLANE_CI_CLIENT_ID" \
        --role "Azure Kubernetes Service RBAC Writer" \
        --scope "$AZURE_AKS_CLUSTER_ID/namespaces/$DIFFLANE_NAMESPACE" >/dev/null
    echo "CI identity may deploy to namespace $DIFFLANE_NAMESPACE"
fi

if [ -d deploy/monitoring/dashboards ]; then
    for dashboard in deploy/monitoring/dashboards/*.json; do
        [ -e "$dashboard" ] || continue
        az grafana dashboard import --only-show-errors --overwrite true \
            --resource-group "$AZURE_RESOURCE_GROUP" --name "$DIFFLANE_GRAFANA_NAME" \
            --definition "$dashboard" >/dev/null
        echo "imported $dashboard into Grafana $DIFFLANE_GRAFANA_NAME"
    done
fi
