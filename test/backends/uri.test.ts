import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ACCEPTED_BACKEND_URIS, parseBackendUri, redactUri } from '../../src/backends/uri.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

const good: Array<[string, unknown]> = [
  ['memory', { kind: 'memory', size: undefined }],
  ['memory:?size=1GiB', { kind: 'memory', size: GiB }],
  ['file:///var/lib/r3map/disk.img', { kind: 'file', path: '/var/lib/r3map/disk.img', size: undefined }],
  ['file:///tmp/a%20b.img?size=64MiB', { kind: 'file', path: '/tmp/a b.img', size: 64 * MiB }],
  ['/tmp/disk.img', { kind: 'file', path: '/tmp/disk.img', size: undefined }],
  ['dir:///var/lib/r3map/chunks?chunk-size=64KiB', { kind: 'dir', path: '/var/lib/r3map/chunks', size: undefined, chunkSize: 65536, maxOpenFiles: undefined }],
  ['dir:///c?size=1MiB&max-open-files=8', { kind: 'dir', path: '/c', size: MiB, chunkSize: undefined, maxOpenFiles: 8 }],
  ['redis://127.0.0.1:6379/0?prefix=vm1', {
    kind: 'redis', url: 'redis://127.0.0.1:6379/0', nodes: [{ host: '127.0.0.1', port: 6379 }], db: 0,
    prefix: 'vm1', chunkSize: 64 * KiB, size: undefined, cluster: false,
  }],
  ['redis://user:s3cret@cache.internal/3?chunk-size=1MiB&size=2GiB', {
    kind: 'redis', url: 'redis://user:s3cret@cache.internal:6379/3', nodes: [{ host: 'cache.internal', port: 6379 }], db: 3,
    prefix: 'r3map', chunkSize: MiB, size: 2 * GiB, cluster: false,
  }],
  ['rediss://:pw@[::1]:7000?cluster=1', {
    kind: 'redis', url: 'rediss://:pw@[::1]:7000/0', nodes: [{ host: '::1', port: 7000 }], db: 0,
    prefix: 'r3map', chunkSize: 64 * KiB, size: undefined, cluster: true,
  }],
  ['redis://10.0.0.1:7000,10.0.0.2:7001/?cluster=true', {
    kind: 'redis', url: 'redis://10.0.0.1:7000/0', nodes: [{ host: '10.0.0.1', port: 7000 }, { host: '10.0.0.2', port: 7001 }], db: 0,
    prefix: 'r3map', chunkSize: 64 * KiB, size: undefined, cluster: true,
  }],
  ['s3://disks/vm1?endpoint=http://127.0.0.1:9000&region=us-east-1', {
    kind: 's3', bucket: 'disks', prefix: 'vm1', endpoint: 'http://127.0.0.1:9000', region: 'us-east-1', forcePathStyle: true,
    chunkSize: 64 * KiB, size: undefined,
  }],
  ['s3://my.bucket/a/b/?chunk-size=4MiB&size=1GiB', {
    kind: 's3', bucket: 'my.bucket', prefix: 'a/b', endpoint: undefined, region: undefined, forcePathStyle: false, chunkSize: 4 * MiB, size: GiB,
  }],
  ['s3://disks?endpoint=https://minio.lan&path-style=0', {
    kind: 's3', bucket: 'disks', prefix: 'r3map', endpoint: 'https://minio.lan', region: undefined, forcePathStyle: false, chunkSize: 64 * KiB, size: undefined,
  }],
  ['cassandra://127.0.0.1:9042/r3map/chunks?prefix=vm1&dc=dc1', {
    kind: 'cassandra', contactPoints: ['127.0.0.1'], port: 9042, keyspace: 'r3map', table: 'chunks', prefix: 'vm1',
    localDataCenter: 'dc1', username: undefined, password: undefined, chunkSize: 64 * KiB, size: undefined,
  }],
  ['cassandra://cassandra:p%40ss@host1,host2:9142/ks/t?chunk-size=128KiB&size=1GiB', {
    kind: 'cassandra', contactPoints: ['host1', 'host2'], port: 9142, keyspace: 'ks', table: 't', prefix: 'r3map',
    localDataCenter: undefined, username: 'cassandra', password: 'p@ss', chunkSize: 128 * KiB, size: GiB,
  }],
  ['cassandra://a:9042,b:9042/ks/t', {
    kind: 'cassandra', contactPoints: ['a', 'b'], port: 9042, keyspace: 'ks', table: 't', prefix: 'r3map',
    localDataCenter: undefined, username: undefined, password: undefined, chunkSize: 64 * KiB, size: undefined,
  }],
  ['grpc://127.0.0.1:1337', { kind: 'grpc', target: { host: '127.0.0.1', port: 1337 }, tls: undefined, tokenFile: undefined, maxRequestBytes: undefined, channels: undefined, size: undefined }],
  ['grpc://server?token-file=/etc/r3map/token&channels=4&chunk-size=1MiB', {
    kind: 'grpc', target: { host: 'server', port: 1337 }, tls: undefined, tokenFile: '/etc/r3map/token', maxRequestBytes: MiB, channels: 4, size: undefined,
  }],
  ['grpcs://r3map.example:443?ca=/ca.pem&cert=/c.pem&key=/k.pem&token-file=/t', {
    kind: 'grpc', target: { host: 'r3map.example', port: 443 }, tls: { ca: '/ca.pem', cert: '/c.pem', key: '/k.pem' }, tokenFile: '/t',
    maxRequestBytes: undefined, channels: undefined, size: undefined,
  }],
  ['grpcs://[::1]:1337', { kind: 'grpc', target: { host: '::1', port: 1337 }, tls: {}, tokenFile: undefined, maxRequestBytes: undefined, channels: undefined, size: undefined }],
  ['grpc+unix:///run/r3map.sock', { kind: 'grpc', target: { path: '/run/r3map.sock' }, tls: undefined, tokenFile: undefined, maxRequestBytes: undefined, channels: undefined, size: undefined }],
  ['nbd://127.0.0.1:10809/disk', { kind: 'nbd', address: { host: '127.0.0.1', port: 10809 }, exportName: 'disk', tls: undefined, connections: undefined, size: undefined }],
  ['nbd://nbd.lan?connections=4', { kind: 'nbd', address: { host: 'nbd.lan', port: 10809 }, exportName: '', tls: undefined, connections: 4, size: undefined }],
  ['nbd://[::1]:10810/my%20disk', { kind: 'nbd', address: { host: '::1', port: 10810 }, exportName: 'my disk', tls: undefined, connections: undefined, size: undefined }],
  ['nbds://127.0.0.1:10809/disk?ca=/pki/ca-cert.pem&cert=/pki/client-cert.pem&key=/pki/client-key.pem', {
    kind: 'nbd', address: { host: '127.0.0.1', port: 10809 }, exportName: 'disk',
    tls: { ca: '/pki/ca-cert.pem', cert: '/pki/client-cert.pem', key: '/pki/client-key.pem' }, connections: undefined, size: undefined,
  }],
  ['nbd+unix:///default?socket=/tmp/r3map.sock', { kind: 'nbd', address: { path: '/tmp/r3map.sock' }, exportName: 'default', tls: undefined, connections: undefined, size: undefined }],
  ['nbds+unix:///?socket=/tmp/s.sock&ca=/ca.pem', { kind: 'nbd', address: { path: '/tmp/s.sock' }, exportName: '', tls: { ca: '/ca.pem' }, connections: undefined, size: undefined }],
];
describe('parseBackendUri accepts', () => {
  for (const [uri, spec] of good) {
    test(`${uri}`, () => assert.deepEqual(parseBackendUri(uri), spec));
  }
});

const bad: Array<[string, RegExp]> = [
  ['nosuch://x', /unknown scheme 'nosuch'.*accepted forms: memory:.*nbd:\/\//],
  ['memory:?size=lots', /size: cannot parse 'lots'/],
  ['memory:?colour=red', /unknown parameter 'colour'/],
  ['memory:?size=0', /size '0' must be more than 0/],
  ['file://host/path', /host 'host' is not allowed/],
  ['file:///', /path is missing/],
  ['file:///x#frag', /fragment \('#frag'\)/],
  ['dir:///c?max-open-files=0', /max-open-files '0'/],
  ['relative/path', /not a URI/],
  ['redis://', /host is missing.*accepted forms: redis:\/\//],
  ['redis://host:99999/0', /port '99999'/],
  ['redis://host:6379/zero', /database 'zero'/],
  ['redis://a:1,b:2/0', /only one host is allowed here/],
  ['redis://host/2?cluster=1', /database 2: Redis Cluster/],
  ['redis://host?cluster=maybe', /cluster 'maybe' is not a boolean/],
  ['redis://host?prefix=a&prefix=b', /parameter 'prefix' is given twice/],
  ['redis://ho$t/0', /host 'ho\$t'/],
  ['s3://Bad_Bucket/x', /bucket 'Bad_Bucket'/],
  ['s3:///x', /bucket '' is not a valid bucket name/],
  ['s3://key:secret@bucket/x', /credentials in the URI are not accepted here \(S3 credentials come from the AWS/],
  ['s3://bucket/x?endpoint=ftp://x', /endpoint 'ftp:\/\/x'/],
  ['s3://bucket/x?prefix=y', /unknown parameter 'prefix'.*allowed here: endpoint/],
  ['cassandra://host:9042', /keyspace is missing/],
  ['cassandra://host:9042/ks', /table is missing/],
  ['cassandra://host:9042/ks/t/extra', /unexpected path after the table/],
  ['cassandra://host:9042/k-s/t', /keyspace 'k-s'/],
  ['cassandra://a:1,b:2/ks/t', /all hosts must use one port, not 1 and 2/],
  ['grpc://host:1337/path', /unexpected path '\/path'/],
  ['grpc://host?ca=/ca.pem', /unknown parameter 'ca'/],
  ['grpcs://host?cert=/c.pem', /needs both 'cert' and 'key'/],
  ['grpcs://host?ca=relative.pem', /ca 'relative.pem' must be an absolute path/],
  ['grpc://user:pw@host', /credentials in the URI are not accepted here/],
  ['grpc+unix://host/run/x.sock', /host 'host' is not allowed/],
  ['grpc://host?channels=0', /channels '0' is not a whole number/],
  ['nbd://host:0/x', /port '0'/],
  ['nbd+unix:///x', /socket parameter is missing/],
  ['nbd+unix://host/x?socket=/s', /host 'host' is not allowed with a Unix socket/],
  ['nbd://host/x?socket=/s', /unknown parameter 'socket'/],
  ['nbd://host/x?ca=/ca.pem', /unknown parameter 'ca'/],
  ['nbds://host/x?key=/k.pem', /needs both 'cert' and 'key'/],
];
describe('parseBackendUri rejects with a usage error that names the wrong part', () => {
  for (const [uri, message] of bad) {
    test(`${uri}`, () => {
      assert.throws(() => parseBackendUri(uri), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'ERR_USAGE');
        assert.match(err.message, message);
        assert.match(err.message, /accepted forms: /);
        return true;
      });
    });
  }
});

describe('secrets', () => {
  const withSecrets = [
    'redis://admin:hunter2@host:6379/x',
    'rediss://:hunter2@host?cluster=nope',
    'cassandra://cassandra:hunter2@host/ks',
    'grpc://user:hunter2@host',
    's3://AKIA:hunter2@bucket/x',
  ];
  for (const uri of withSecrets) {
    test(`the password in ${redactUri(uri)} never reaches the error message`, () => {
      assert.throws(() => parseBackendUri(uri), (err: Error) => {
        assert.ok(!err.message.includes('hunter2'), err.message);
        assert.ok(err.message.includes(':***@'), err.message);
        return true;
      });
    });
  }

  const redactions: Array<[string, string]> = [
    ['redis://user:pw@h:1/0', 'redis://user:***@h:1/0'],
    ['redis://:pw@h', 'redis://:***@h'],
    ['redis://user@h', 'redis://user@h'],
    ['cassandra://u:p:q@a,b/ks/t', 'cassandra://u:***@a,b/ks/t'],
    ['nbd://h/x', 'nbd://h/x'],
  ];
  for (const [uri, redacted] of redactions) {
    test(`redactUri turns ${redacted.replace('***', 'the password')} into ${redacted}`, () => assert.equal(redactUri(uri), redacted));
  }
});

test('ACCEPTED_BACKEND_URIS lists every scheme the parser accepts', () => {
  const text = ACCEPTED_BACKEND_URIS.join(' ');
  for (const scheme of ['memory:', 'file://', 'dir://', 'redis://', 's3://', 'cassandra://', 'grpc://', 'grpcs://', 'grpc+unix://', 'nbd://', 'nbds://', 'nbd+unix://']) {
    assert.ok(text.includes(scheme), scheme);
  }
});
