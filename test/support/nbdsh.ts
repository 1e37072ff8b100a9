/**
 * Runs a python script in nbdsh (python3-libnbd, Debian's python via TOOL_PATH) against one NBD
 * URI: the script sees `uri`, `nbd`, `out` (a dict it fills) and `err(f)` (f's NBD errno name, or
 * 'ok'); the result is `out`, read from the script's last stdout line.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describeRun, runTool } from './tools.js';

const PRELUDE = `
import nbd, json, os
uri = os.environ['R3MAP_URI']
out = {}
def err(f):
    try:
        f()
        return 'ok'
    except nbd.Error as e:
        return str(e.errno)
`;

/** Writes `<dir>/<name>.py` and runs it; fails the test when nbdsh exits non-zero. */
export async function nbdsh(dir: string, uri: string, name: string, body: string): Promise<Record<string, unknown>> {
  const file = path.join(dir, `${name}.py`);
  await writeFile(file, `${PRELUDE}\n${body}\nprint(json.dumps(out))\n`);
  const args = ['-n', '-c', `exec(open(${JSON.stringify(file)}).read())`];
  const r = await runTool('nbdsh', args, { timeoutMs: 60_000, env: { R3MAP_URI: uri } });
  assert.equal(r.code, 0, describeRun('nbdsh', args, r));
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
}
