#!/usr/bin/env bash
# The schemas deploy/k8s is validated against, in $RELAIS_STATE_DIR/tools/k8s-schemas:
#   core/   Kubernetes' own kinds, strict, from the kubernetes-validate package (PyPI), made
#           standalone for kubeconform (deploy/k8s/core-to-standalone.py);
#   crds/   Rook, KEDA and Prometheus Operator kinds, converted from the CRDs those projects
#           publish in their Go modules (deploy/k8s/crd-to-jsonschema.py);
# and, for Strimzi (whose CRDs are not in any registry here), the validators generated from
# its CRDs in the @kubernetes-models/strimzi-kafka-operator package (npm).
set -euo pipefail
COMPONENT=k8s-schemas
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUBERNETES_VALIDATE_VERSION=1.37.0
# The Kubernetes version the manifests target.
KUBERNETES_SCHEMA_VERSION=1.34.0
ROOK_VERSION=v1.18.6
KEDA_VERSION=v2.21.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
STRIMZI_MODELS_VERSION=1.0.1
# The KEDA kinds deploy/k8s uses.
KEDA_KINDS="scaledobjects triggerauthentications"

TOOLS="$RELAIS_STATE_DIR/tools"
OUT="$TOOLS/k8s-schemas"
WANTED="$KUBERNETES_SCHEMA_VERSION $KUBERNETES_VALIDATE_VERSION $ROOK_VERSION $KEDA_VERSION ($KEDA_KINDS) $PROMETHEUS_OPERATOR_VERSION $STRIMZI_MODELS_VERSION"
if [ "$(cat "$OUT/.versions" 2>/dev/null)" = "$WANTED" ]; then
    exit 0
fi
venv="$TOOLS/venv"
[ -x "$venv/bin/pip" ] || die "run deploy/native/test-tools.sh (it creates $venv first)"
log "preparing Kubernetes and CRD schemas"
rm -rf "$OUT"
mkdir -p "$OUT/core" "$OUT/crds"

"$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" pyyaml \
    || die "pip install kubernetes-validate failed"
site="$("$venv/bin/python" -c 'import kubernetes_validate, os; print(os.path.dirname(kubernetes_validate.__file__))')"
"$venv/bin/python" "$RELAIS_ROOT/deploy/k8s/core-to-standalone.py" \
    "$site/kubernetes-json-schema/v$KUBERNETES_SCHEMA_VERSION-local-strict" "$OUT/core/v$KUBERNETES_SCHEMA_VERSION" >&2

# These projects' go.mod files are not in the checksum database; the module contents are
# only read (CRD YAML), never built.
export GONOSUMDB="github.com/rook/rook,github.com/kedacore/keda,github.com/prometheus-operator/prometheus-operator"
module_dir() {
    (cd "$TOOLS" && go mod download -json "$1" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
}
rook="$(module_dir "github.com/rook/rook@$ROOK_VERSION")"
keda="$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")"
prometheus_operator="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")"
keda_crds=()
for kind in $KEDA_KINDS; do keda_crds+=("$keda/config/crd/bases/keda.sh_$kind.yaml"); done
"$venv/bin/python" "$RELAIS_ROOT/deploy/k8s/crd-to-jsonschema.py" "$OUT/crds" \
    "$rook/deploy/examples/crds.yaml" \
    "${keda_crds[@]}" \
    "$prometheus_operator/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" >&2

npm install --prefix "$TOOLS/node-k8s" --no-save --no-package-lock --no-audit --no-fund \
    "@kubernetes-models/strimzi-kafka-operator@$STRIMZI_MODELS_VERSION" "yaml@2" >/dev/null \
    || die "npm install @kubernetes-models/strimzi-kafka-operator failed"
echo "$WANTED" >"$OUT/.versions"
log "schemas ready in $OUT"
