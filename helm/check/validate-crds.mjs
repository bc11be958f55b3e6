// Validates the prometheus-operator objects a chart render made (JSON list from split.py)
// against @kubernetes-models/prometheus-operator's schemas: types, patterns, required fields.
// Unknown fields are caught by the TypeScript check (split.py writes out/*.gen.ts for tsc).
import { readFileSync } from "node:fs";
import { ServiceMonitor, PodMonitor, PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = { ServiceMonitor, PodMonitor, PrometheusRule };
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of JSON.parse(readFileSync(file, "utf8"))) {
    const Model = models[doc.kind];
    const what = `${file}: ${doc.kind}/${doc.metadata?.name}`;
    if (!Model) {
      console.log(`${what}: no model for this kind`);
      failed++;
      continue;
    }
    try {
      new Model(doc).validate();
      console.log(`${what}: valid`);
    } catch (e) {
      console.log(`${what}: ${e.message}`);
      failed++;
    }
  }
}
process.exit(failed ? 1 : 0);
