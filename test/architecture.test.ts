/**
 * The folder rules of docs/architecture.md ("Layout"), read from the imports of the sources:
 * process folders depend only on the shared layers (never on another process's folder), the
 * contracts layer only on the addon and the schemas, the CLI on the supervisor and the shared
 * layers, and no two folders depend on each other.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { ROOT } from './helpers/tsvmm';

/** Shared layers, and what each may use besides itself. */
const LAYERS: Record<string, string[]> = {
  native: [],
  proto: [],
  contracts: ['native', 'proto'],
  kvm: ['native'],
  boot: ['contracts', 'kvm'],
  virtio: ['contracts', 'native'],
};
const SHARED = Object.keys(LAYERS);
/** Process folders, and what each may use. */
const PROCESSES: Record<string, string[]> = {
  'supervisor': SHARED,
  'vmm': SHARED,
  'driver-domain': SHARED,
  'priv-domain': SHARED,
  'cli': [...SHARED, 'supervisor'],
};

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** folder -> folder -> the first file:line that imports across. */
function folderImports(): Map<string, Map<string, string>> {
  const graph = new Map<string, Map<string, string>>();
  const spec = /(?:\bfrom\s+|\bimport\s*\(\s*|\brequire\s*\(\s*|^\s*import\s+)(['"])(\.{1,2}\/[^'"]+)\1/gm;
  for (const folder of [...SHARED, ...Object.keys(PROCESSES)]) {
    for (const file of sources(path.join(ROOT, folder))) {
      const text = fs.readFileSync(file, 'utf8');
      for (const m of text.matchAll(spec)) {
        const target = path.relative(ROOT, path.resolve(path.dirname(file), m[2])).split(path.sep)[0];
        if (target === folder) continue;
        const line = text.slice(0, m.index).split('\n').length;
        const edges = graph.get(folder) ?? new Map<string, string>();
        if (!edges.has(target)) edges.set(target, `${path.relative(ROOT, file)}:${line}`);
        graph.set(folder, edges);
      }
    }
  }
  return graph;
}

describe('architecture: folder dependencies', () => {
  const graph = folderImports();

  it('the scan sees the imports it judges', () => {
    assert.ok(graph.get('vmm')?.has('contracts'), 'vmm -> contracts not found: the import scan is broken');
    assert.ok(graph.get('cli')?.has('supervisor'), 'cli -> supervisor not found: the import scan is broken');
  });

  it('each folder imports only what its layer allows', () => {
    const bad: string[] = [];
    for (const [from, edges] of graph) {
      const allowed = LAYERS[from] ?? PROCESSES[from];
      for (const [to, where] of edges) if (!allowed.includes(to)) bad.push(`${from} -> ${to} (${where})`);
    }
    assert.deepEqual(bad, [], `imports across the layer rules:\n  ${bad.join('\n  ')}`);
  });

  it('no folder cycle', () => {
    const cycles: string[] = [];
    for (const [a, edges] of graph) for (const [b, where] of edges) {
      const back = graph.get(b)?.get(a);
      if (back && a < b) cycles.push(`${a} (${where}) <-> ${b} (${back})`);
    }
    assert.deepEqual(cycles, []);
  });
});
