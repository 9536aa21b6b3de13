import { runLab, summaryTable } from "@loralab/study";
const r = await runLab({ quick: true, out: "/tmp/labq" });
console.log(summaryTable(r));
console.log(r.findings, r.gates, r.seconds, r.report);
