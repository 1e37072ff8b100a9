import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { formatGrpcUri, grpcTarget, parseGrpcListenUri } from '../../src/rpc/grpc-address.js';
import { UsageError } from '../../src/errors.js';

describe('gRPC listen URIs', () => {
  const good = [
    { uri: 'grpc://127.0.0.1:1337', expect: { scheme: 'grpc', host: '127.0.0.1', port: 1337 }, target: '127.0.0.1:1337' },
    { uri: 'grpcs://localhost:0', expect: { scheme: 'grpcs', host: 'localhost', port: 0 }, target: 'localhost:0' },
    { uri: 'grpc://[::1]:1337', expect: { scheme: 'grpc', host: '::1', port: 1337 }, target: '[::1]:1337' },
    { uri: 'grpc://:1337', expect: { scheme: 'grpc', host: '', port: 1337 }, target: '0.0.0.0:1337' },
    { uri: 'grpc+unix:///run/r3map.sock', expect: { scheme: 'grpc+unix', path: '/run/r3map.sock' }, target: 'unix:///run/r3map.sock' },
  ];
  for (const c of good) {
    it(`reads ${c.uri}`, () => {
      const address = parseGrpcListenUri(c.uri);
      assert.deepEqual(address, c.expect);
      assert.equal(grpcTarget(address), c.target);
      if (c.uri !== 'grpc://:1337') assert.equal(formatGrpcUri(address), c.uri);
    });
  }

  const bad = [
    { uri: '127.0.0.1:1337', text: /unknown scheme/ },
    { uri: 'http://127.0.0.1:1337', text: /unknown scheme "http".*grpc:\/\/HOST:PORT/ },
    { uri: 'grpc://127.0.0.1', text: /no port/ },
    { uri: 'grpc://127.0.0.1:99999', text: /out of range/ },
    { uri: 'grpc://127.0.0.1:1337/x', text: /expected grpc:\/\/HOST:PORT/ },
    { uri: 'grpc://::1:1337', text: /brackets/ },
    { uri: 'grpc+unix://run/r3map.sock', text: /must be absolute/ },
  ];
  for (const c of bad) {
    it(`says what is wrong with ${c.uri}`, () => {
      assert.throws(() => parseGrpcListenUri(c.uri), (err: Error) => err instanceof UsageError && c.text.test(err.message));
    });
  }
});
