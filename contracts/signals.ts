/**
 * The signals an operator may send a component through the API (`tsvmm kill COMPONENT --signal`),
 * shared by the priv-domain (which answers 400 for any other) and the supervisor (which sends
 * them). Only what tests recovery makes sense: the fail-stop kinds (crash, abort, kill), a
 * polite exit, and stop/continue (a hang). SIGUSR1 is not among them: it would open a Node
 * process's debugger (contracts/process.ts ignores it anyway), and SIGUSR2 is the test hooks'.
 * The keeper blocks every signal it can, so only SIGKILL, SIGSTOP and SIGCONT reach it.
 */
import * as os from 'os';

export const KILL_COMPONENTS = ['vmm', 'driver-domain', 'priv-domain', 'keeper'] as const;
export type KillComponent = typeof KILL_COMPONENTS[number];

const FAIL_STOP = ['SIGKILL', 'SIGTERM', 'SIGINT', 'SIGQUIT', 'SIGSEGV', 'SIGBUS', 'SIGILL', 'SIGFPE', 'SIGABRT', 'SIGSTOP', 'SIGCONT'];

export const ALLOWED_SIGNALS: Record<KillComponent, readonly string[]> = {
  'vmm': FAIL_STOP,
  'driver-domain': FAIL_STOP,
  'priv-domain': FAIL_STOP,
  'keeper': ['SIGKILL', 'SIGSTOP', 'SIGCONT'],
};

/** `sig` (a name with or without SIG, any case, or a number) as a canonical name, or undefined. */
export function signalName(sig: string): string | undefined {
  const table = os.constants.signals as Record<string, number>;
  if (/^\d+$/.test(sig)) return Object.keys(table).find((k) => table[k] === Number(sig));
  const up = sig.toUpperCase();
  const name = up.startsWith('SIG') ? up : `SIG${up}`;
  return name in table ? name : undefined;
}

/**
 * The signal number to send `component` for the operator's `sig`, or an error line: an unknown
 * signal, or one that component does not take.
 */
export function killSignal(component: KillComponent, sig: string): { signal: number; name: string } | { error: string } {
  const name = signalName(sig);
  if (!name) return { error: `unknown signal "${sig}"` };
  if (!ALLOWED_SIGNALS[component].includes(name)) {
    return { error: `${name} cannot be sent to the ${component} (allowed: ${ALLOWED_SIGNALS[component].join(', ')})` };
  }
  return { signal: (os.constants.signals as Record<string, number>)[name], name };
}
