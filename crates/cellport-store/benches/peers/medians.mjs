// Medians of peer-bench JSON lines (one per run, as `peer_queue` and its peers print them), by
// system and mode: a markdown table on stdout, each Cellport figure with its ratio to the peer's
// (the first column not from Cellport).
//
//   node medians.mjs RUNS.jsonl
import { readFileSync } from 'node:fs';

const runs = readFileSync(process.argv[2], 'utf8')
  .split('\n')
  .filter((line) => line.trim().startsWith('{'))
  .map((line) => JSON.parse(line));

// The shape's parameters, the same in every column: left out of the table.
const shape = new Set(['jobs', 'chunk', 'concurrency', 'rate', 'events', 'events_per_job', 'events_expected',
  'frames_expected', 'clients', 'users', 'conns_per_user']);

// column ("system mode") -> figure ("scenario.name") -> values
const columns = new Map();
const figures = [];
function add(column, figure, value) {
  if (typeof value !== 'number' || shape.has(figure.split('.').pop())) return;
  if (!columns.has(column)) columns.set(column, new Map());
  const values = columns.get(column);
  if (!values.has(figure)) values.set(figure, []);
  values.get(figure).push(value);
  if (!figures.includes(figure)) figures.push(figure);
}
function flatten(column, prefix, object) {
  for (const [key, value] of Object.entries(object)) {
    if (value && typeof value === 'object' && !Array.isArray(value)) flatten(column, `${prefix}${key}.`, value);
    else add(column, `${prefix}${key}`, value);
  }
}
for (const run of runs) {
  if (Array.isArray(run.results)) {
    for (const { mode, ...scenarios } of run.results) flatten(`${run.system} ${mode}`, '', scenarios);
  } else {
    const { bench, system, ...rest } = run;
    flatten(system, '', rest);
  }
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

const names = [...columns.keys()];
const peer = names.find((c) => !c.startsWith('cellport'));
const medians = Object.fromEntries(
  names.map((c) => [c, Object.fromEntries([...columns.get(c)].map(([f, v]) => [f, median(v)]))]),
);
const header = ['figure', ...names.map((c) => `${c} (n=${Math.max(...[...columns.get(c).values()].map((v) => v.length))})`)];
console.log(`| ${header.join(' | ')} |`);
console.log(`|${header.map(() => ' --- ').join('|')}|`);
for (const figure of figures) {
  const base = medians[peer]?.[figure];
  const cells = names.map((c) => {
    const value = medians[c][figure];
    if (value === undefined) return '';
    if (c === peer || !base) return String(value);
    return `${value} (${(value / base).toFixed(2)}x)`;
  });
  console.log(`| ${figure} | ${cells.join(' | ')} |`);
}
console.log(JSON.stringify({ medians }));
