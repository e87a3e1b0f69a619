// Validates the Strimzi resources of a rendered manifest (stdin) against Strimzi's CRD
// schemas, as compiled into @kubernetes-models/strimzi-kafka-operator. kubeconform checks
// everything else; no registry here carries Strimzi's CRD files themselves.
//
// Usage: kubectl kustomize deploy/k8s/overlays/production |
//        MODELS=.state/tools/node-k8s/node_modules node deploy/k8s/validate-strimzi.mjs
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const models = process.env.MODELS;
if (!models) {
  console.error("MODELS must name the node_modules holding @kubernetes-models/strimzi-kafka-operator");
  process.exit(2);
}
const { parseAllDocuments } = await import(pathToFileURL(join(models, "yaml/dist/index.js")).href);
const documents = parseAllDocuments(readFileSync(0, "utf8")).map((document) => document.toJS());

let checked = 0;
const failures = [];
for (const resource of documents) {
  if (!resource || !String(resource.apiVersion).startsWith("kafka.strimzi.io/")) continue;
  const version = resource.apiVersion.split("/")[1];
  const file = join(models, "@kubernetes-models/strimzi-kafka-operator", "kafka.strimzi.io", version, `${resource.kind}.js`);
  let Model;
  try {
    Model = (await import(pathToFileURL(file).href))[resource.kind];
  } catch (error) {
    failures.push(`${resource.kind}/${resource.metadata?.name}: no schema for ${resource.apiVersion} ${resource.kind}`);
    continue;
  }
  try {
    new Model(resource).validate();
    checked += 1;
  } catch (error) {
    failures.push(`${resource.kind}/${resource.metadata?.name}: ${error.message}`);
  }
}
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
console.log(`${checked} Strimzi resources valid`);
