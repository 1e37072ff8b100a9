import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { UsageError } from '../../src/errors.js';
import { formatListenAddress, parseListenAddress, type ListenAddress } from '../../src/nbd/listen-address.js';

describe('parseListenAddress', () => {
  const good: { input: string; expect: ListenAddress; text: string }[] = [
    { input: '127.0.0.1:10809', expect: { host: '127.0.0.1', port: 10809 }, text: '127.0.0.1:10809' },
    { input: '[::1]:10809', expect: { host: '::1', port: 10809 }, text: '[::1]:10809' },
    { input: '[fe80::1%lo]:0', expect: { host: 'fe80::1%lo', port: 0 }, text: '[fe80::1%lo]:0' },
    { input: 'localhost:10809', expect: { host: 'localhost', port: 10809 }, text: 'localhost:10809' },
    { input: 'nbd-1.example.com:65535', expect: { host: 'nbd-1.example.com', port: 65535 }, text: 'nbd-1.example.com:65535' },
    { input: ':10809', expect: { host: '', port: 10809 }, text: ':10809' },
    { input: ' 0.0.0.0:0 ', expect: { host: '0.0.0.0', port: 0 }, text: '0.0.0.0:0' },
    { input: 'unix:/run/r3map.sock', expect: { path: '/run/r3map.sock' }, text: 'unix:/run/r3map.sock' },
    { input: 'unix:relative.sock', expect: { path: 'relative.sock' }, text: 'unix:relative.sock' },
    { input: '/tmp/nbd.sock', expect: { path: '/tmp/nbd.sock' }, text: 'unix:/tmp/nbd.sock' },
  ];
  for (const { input, expect, text } of good) {
    test(`parses "${input}" and formats it back as "${text}"`, () => {
      const parsed = parseListenAddress(input);
      assert.deepEqual(parsed, expect);
      assert.equal(formatListenAddress(parsed), text);
    });
  }

  const bad = ['', '10809', 'localhost', 'localhost:', 'localhost:http', 'localhost:65536', 'localhost:-1', '::1:10809', '[::1:10809', '[nope]:1', 'unix:', 'bad host:1', 'a_b:1', '-x:1'];
  for (const input of bad) {
    test(`refuses "${input}" with a UsageError`, () => {
      assert.throws(() => parseListenAddress(input), UsageError);
    });
  }
});
