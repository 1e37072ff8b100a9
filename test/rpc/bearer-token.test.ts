import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { inspect } from 'node:util';
import { BearerToken } from '../../src/rpc/bearer-token.js';
import { UsageError } from '../../src/errors.js';
import { makeTempDir, removeDir } from '../support/tools.js';

describe('BearerToken', () => {
  let dir: string | undefined;
  before(async () => {
    dir = await makeTempDir('r3map-token-');
  });
  after(() => removeDir(dir));

  const token = new BearerToken('s3cr3t-T0ken');
  const cases = [
    { name: 'the exact header', values: ['Bearer s3cr3t-T0ken'], expect: true },
    { name: 'a lower-case scheme', values: ['bearer s3cr3t-T0ken'], expect: true },
    { name: 'the right value among wrong ones', values: ['Bearer nope', 'Bearer s3cr3t-T0ken'], expect: true },
    { name: 'a wrong token', values: ['Bearer s3cr3t-T0keN'], expect: false },
    { name: 'a prefix of the token', values: ['Bearer s3cr3t'], expect: false },
    { name: 'the token without a scheme', values: ['s3cr3t-T0ken'], expect: false },
    { name: 'another scheme', values: ['Basic s3cr3t-T0ken'], expect: false },
    { name: 'no header', values: [], expect: false },
    { name: 'a binary value', values: [Buffer.from('Bearer s3cr3t-T0ken')], expect: false },
  ];
  for (const c of cases) {
    it(`${c.expect ? 'accepts' : 'refuses'} ${c.name}`, () => {
      assert.equal(token.matches(c.values), c.expect);
    });
  }

  it('reads a token file without its trailing newline', async () => {
    const file = path.join(dir!, 'token');
    await writeFile(file, 's3cr3t-T0ken\n');
    const t = await BearerToken.fromFile(file);
    assert.equal(t.header, 'Bearer s3cr3t-T0ken');
    assert.equal(t.matches(['Bearer s3cr3t-T0ken']), true);
  });

  const bad = [
    { name: 'a missing file', content: undefined, text: /cannot read the token file .*ENOENT/ },
    { name: 'an empty file', content: '\n\n', text: /is empty/ },
    { name: 'a token with a space', content: 'two words\n', text: /printable ASCII without spaces/ },
  ];
  for (const c of bad) {
    it(`says what is wrong with ${c.name}`, async () => {
      const file = path.join(dir!, `bad-${c.name.replace(/\W+/g, '-')}`);
      if (c.content !== undefined) await writeFile(file, c.content);
      await assert.rejects(BearerToken.fromFile(file), (err: Error) => err instanceof UsageError && c.text.test(err.message));
    });
  }

  it('keeps the token out of logs and inspection', () => {
    assert.doesNotMatch(JSON.stringify({ token }), /s3cr3t/);
    assert.doesNotMatch(inspect(token), /s3cr3t/);
  });
});
