import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseBackendUri } from '../../src/backends/uri.js';

const good: Array<[string, unknown]> = [
  ['memory', { kind: 'memory', size: undefined }],
  ['memory:?size=1GiB', { kind: 'memory', size: 2 ** 30 }],
  ['file:///var/lib/r3map/disk.img', { kind: 'file', path: '/var/lib/r3map/disk.img', size: undefined }],
  ['file:///tmp/a%20b.img?size=64MiB', { kind: 'file', path: '/tmp/a b.img', size: 64 * 2 ** 20 }],
  ['/tmp/disk.img', { kind: 'file', path: '/tmp/disk.img', size: undefined }],
  ['dir:///var/lib/r3map/chunks?chunk-size=64KiB', { kind: 'dir', path: '/var/lib/r3map/chunks', size: undefined, chunkSize: 65536, maxOpenFiles: undefined }],
  ['dir:///c?size=1MiB&max-open-files=8', { kind: 'dir', path: '/c', size: 2 ** 20, chunkSize: undefined, maxOpenFiles: 8 }],
];
for (const [uri, spec] of good) {
  test(`parses ${uri}`, () => assert.deepEqual(parseBackendUri(uri), spec));
}

const bad: Array<[string, RegExp]> = [
  ['nosuch://x', /unknown scheme 'nosuch'.*accepted forms/],
  ['memory:?size=lots', /size: cannot parse 'lots'/],
  ['memory:?colour=red', /unknown parameter 'colour'/],
  ['file://host/path', /host 'host' is not allowed/],
  ['file:///', /path is missing/],
  ['dir:///c?max-open-files=0', /max-open-files '0'/],
  ['relative/path', /not a URI/],
];
for (const [uri, message] of bad) {
  test(`rejects ${uri} with a usage error that names the wrong part`, () => {
    assert.throws(() => parseBackendUri(uri), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_USAGE');
      assert.match(err.message, message);
      return true;
    });
  });
}
