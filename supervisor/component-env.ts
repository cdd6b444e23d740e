/**
 * The environment a component process starts with: the user's, minus what
 * only slows a restart down. NODE_EXTRA_CA_CERTS makes every Node process
 * read and parse a CA bundle before running a line of JavaScript (~70 ms of
 * a ~110 ms start here); no component speaks TLS, and a cold vmm restart is
 * on the guest's critical path. NODE_OPTIONS could carry --inspect (a debugger that runs code
 * as the component's user, root where TAPs are served): components never take it.
 */
export function componentEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.NODE_OPTIONS;
  // Only the driver-domain asks for a deep libuv pool. A vmm with 64 idle pool threads takes
  // longer to die, and its keeper saves only once every thread is gone.
  if (!('UV_THREADPOOL_SIZE' in extra)) delete env.UV_THREADPOOL_SIZE;
  return env;
}
