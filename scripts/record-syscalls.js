#!/usr/bin/env node
// Turns an `strace -f` log of test runs made with TSVMM_SECCOMP=record into the per-component
// seccomp allowlists, contracts/seccomp-allowlists.ts (scripts/record-syscalls.sh runs both).
//
// A component is a process that exec'd dist/<component>/main[.bundle].js; its threads are the
// tasks cloned with CLONE_THREAD from it. What counts is what its threads call after its seccomp()
// (confineSelf, contracts/confinement.ts: record mode installs an allow-everything filter there, as
// a marker): start-up calls before it are not in its list. The keeper (a CLONE_VM child of the
// vmm) is reported, not listed: its filter is fixed in native/kvm/keeper.c.
//
//   node scripts/record-syscalls.js TRACE... > contracts/seccomp-allowlists.ts
const fs = require('fs');
const readline = require('readline');

const COMPONENTS = ['vmm', 'driver-domain', 'priv-domain'];
// Task ids are reused: each run of lines of one tid between its first line and its exit is an
// incarnation, and everything is keyed by incarnation.
let nextInc = 0;
const inc = new Map(); // tid -> its current incarnation
const group = new Map(); // incarnation -> incarnation of its thread group leader (process)
const component = new Map(); // process incarnation -> name, or { parent } for a CLONE_VM child
const marker = new Map(); // incarnation -> event index of its seccomp() call
const pendingClone = new Map(); // tid -> flags of its unfinished clone
const events = []; // [incarnation, name] in order
const incOf = (tid) => { if (!inc.has(tid)) { inc.set(tid, nextInc); group.set(nextInc, nextInc); nextInc++; } return inc.get(tid); };
const leader = (i) => { let t = i; while (group.get(t) !== t) t = group.get(t); return t; };

function cloneDone(parentTid, flags, ret) {
  const child = Number(ret);
  if (!(child > 0)) return;
  const c = incOf(child);
  const p = incOf(parentTid);
  if (/CLONE_THREAD/.test(flags)) group.set(c, leader(p));
  else {
    group.set(c, c);
    // The keeper: cloned by a vmm with CLONE_VM, never exec'd.
    if (/CLONE_VM/.test(flags)) component.set(c, { parent: leader(p) });
  }
}

async function read(file) {
  const rl = readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity });
  for await (const line of rl) {
    const m = /^(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const tid = Number(m[1]);
    const rest = m[2];
    const me = incOf(tid);
    if (/^\+\+\+ (exited|killed)/.test(rest)) { inc.delete(tid); continue; }
    const resumed = /^<\.\.\. (\w+) resumed>.*= (-?\d+)/.exec(rest);
    if (resumed) {
      const p = pendingClone.get(tid);
      if (p !== undefined && /^(clone|clone3|fork|vfork)$/.test(resumed[1])) { pendingClone.delete(tid); cloneDone(tid, p, resumed[2]); }
      continue;
    }
    const call = /^(\w+)\((.*)$/.exec(rest);
    if (!call) continue;
    const name = call[1];
    events.push([me, name]);
    if (process.env.RECORD_DEBUG === name) process.stderr.write(`${file}: inc ${me}: ${line.slice(0, 160)}\n`);
    if (/^(clone|clone3|fork|vfork)$/.test(name)) {
      const done = /= (-?\d+)(?: \w+)?(?: \(.*\))?$/.exec(call[2]);
      const flags = name === 'fork' || name === 'vfork' ? '' : call[2];
      if (done && !/<unfinished \.\.\.>$/.test(call[2])) cloneDone(tid, flags, done[1]);
      else pendingClone.set(tid, flags);
    } else if (name === 'execve') {
      // An exec that failed never reaches confineSelf, so no marker: its calls are not counted.
      const c = /dist\/(vmm|driver-domain|priv-domain)\/main(?:\.bundle)?\.js"/.exec(call[2]);
      if (c) component.set(leader(me), c[1]);
    } else if (name === 'seccomp' && /SECCOMP_FILTER_FLAG_TSYNC/.test(call[2])) {
      const l = leader(me);
      if (!marker.has(l)) marker.set(l, events.length - 1);
    }
  }
}

(async () => {
  const files = process.argv.slice(2);
  if (!files.length) { process.stderr.write('usage: node scripts/record-syscalls.js TRACE...\n'); process.exit(2); }
  const counts = Object.fromEntries([...COMPONENTS, 'keeper'].map((c) => [c, new Map()]));
  const processes = Object.fromEntries([...COMPONENTS, 'keeper'].map((c) => [c, new Set()]));
  for (const f of files) {
    inc.clear(); group.clear(); component.clear(); marker.clear(); pendingClone.clear(); events.length = 0;
    await read(f);
    const markAt = new Map();
    for (const [m, i] of marker) { const p = leader(m); if (!markAt.has(p) || markAt.get(p) > i) markAt.set(p, i); }
    const nameOf = (p) => {
      const c = component.get(p);
      if (typeof c === 'string') return c;
      if (c && nameOf(leader(c.parent)) === 'vmm') return 'keeper';
      return undefined;
    };
    events.forEach(([me, name], i) => {
      const p = leader(me);
      const c = nameOf(p);
      if (!c) return;
      if (c !== 'keeper' && !(markAt.has(p) && i > markAt.get(p))) return;
      if (process.env.RECORD_DEBUG === name) process.stderr.write(`${f}: event ${i} of inc ${me} counted for the ${c} (process inc ${p})\n`);
      processes[c].add(`${f}:${p}`);
      counts[c].set(name, (counts[c].get(name) ?? 0) + 1);
    });
  }
  const lists = {};
  for (const c of COMPONENTS) lists[c] = [...counts[c]].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([n]) => n);
  process.stderr.write(COMPONENTS.map((c) => `${c}: ${lists[c].length} calls from ${processes[c].size} processes`).join('\n') + '\n');
  process.stderr.write(`keeper (native/kvm/keeper.c has the list): ${[...counts.keeper.keys()].sort().join(' ')}\n`);
  const fmt = (l) => l.map((n) => `'${n}'`).join(', ').replace(/(.{1,96})(, |$)/g, '    $1,\n').replace(/,,\n$/, ',\n');
  process.stdout.write(`// Generated by scripts/record-syscalls.sh: do not edit (contracts/confinement.ts adds to it).
// What each component called once confined, over the test suites it names, most frequent first (the
// filter compares in this order). Regenerate after a change that makes a component call something new.
export const RECORDED: Record<'vmm' | 'driver-domain' | 'priv-domain', string[]> = {
${COMPONENTS.map((c) => `  ${c.includes('-') ? `'${c}'` : c}: [\n${fmt(lists[c])}  ],`).join('\n')}
};
`);
})();
