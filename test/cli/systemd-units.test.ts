/**
 * The unit files in contrib/systemd as systemd itself reads them: `systemd-analyze verify` of one
 * instance of each template (syntax, directives this systemd knows, the executables it would run).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { PROJECT_ROOT, requireTool, runTool } from '../support/tools.js';

const UNITS = path.join(PROJECT_ROOT, 'contrib', 'systemd');

test('every unit in contrib/systemd passes systemd-analyze verify', async (t) => {
  if (!requireTool(t, 'systemd-analyze')) return;
  const templates = (await readdir(UNITS)).filter((f) => f.endsWith('@.service'));
  assert.ok(templates.length >= 2, `templates found: ${templates.join(', ')}`);
  for (const template of templates) {
    const instance = path.join(UNITS, template.replace('@.service', '@example.service'));
    const r = await runTool('systemd-analyze', ['verify', instance], { timeoutMs: 30_000 });
    assert.equal(r.code, 0, `${template}: ${r.stdout}${r.stderr}`);
    assert.equal(r.stderr.trim(), '', `${template} has warnings: ${r.stderr}`);
  }
});
