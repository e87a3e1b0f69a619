#!/usr/bin/env bash
# Builds the Parallel Consumer peer of `make bench` (Maven Central) into target/classes and
# target/dependency/. Run it with:
#   java -cp 'target/classes:target/dependency/*' relais.peer.ParallelConsumerPeer
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v mvn >/dev/null || { echo "Maven is needed to build the Parallel Consumer peer" >&2; exit 1; }
mvn -B -q package dependency:copy-dependencies -DincludeScope=runtime -DskipTests
