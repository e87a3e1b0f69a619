#!/usr/bin/env bash
# Builds the Camel peer of `make bench` (Maven Central: Camel, Kafka client, AWS SDK) into
# target/classes and target/dependency/. Run it with:
#   java -cp 'target/classes:target/dependency/*' relais.peer.CamelPeer http|s3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v mvn >/dev/null || { echo "Maven is needed to build the Camel peer" >&2; exit 1; }
mvn -B -q package dependency:copy-dependencies -DincludeScope=runtime -DskipTests
