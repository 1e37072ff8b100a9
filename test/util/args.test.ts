import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Command, InvalidArgumentError } from 'commander';
import { collect, countArg, durationArg, sizeArg } from '../../src/util/args.js';

describe('sizeArg', () => {
  test('reads byte sizes with units', () => {
    assert.equal(sizeArg('4096'), 4096);
    assert.equal(sizeArg('64KiB'), 64 * 1024);
    assert.equal(sizeArg('1GiB'), 2 ** 30);
  });
  for (const bad of ['', 'abc', '1XB', '-1']) {
    test(`rejects '${bad}' with commander's InvalidArgumentError (the size parser's message)`, () => {
      assert.throws(() => sizeArg(bad), (err: unknown) => err instanceof InvalidArgumentError && /cannot parse/.test(err.message));
    });
  }
});

describe('durationArg', () => {
  test('reads durations in milliseconds', () => {
    assert.equal(durationArg('250ms'), 250);
    assert.equal(durationArg('5s'), 5000);
    assert.equal(durationArg('2m'), 120_000);
    assert.equal(durationArg('10'), 10);
  });
  for (const bad of ['', 'soon', '5 days', '-1s']) {
    test(`rejects '${bad}' with InvalidArgumentError`, () => {
      assert.throws(() => durationArg(bad), (err: unknown) => err instanceof InvalidArgumentError && /cannot parse/.test(err.message));
    });
  }
});

describe('countArg', () => {
  test('reads whole numbers, 0 included', () => {
    assert.equal(countArg('0'), 0);
    assert.equal(countArg('64'), 64);
    assert.equal(countArg(' 7 '), 7);
  });
  for (const bad of ['', '-1', '1.5', 'ten', '1e3', '99999999999999999999']) {
    test(`rejects '${bad}' with InvalidArgumentError`, () => {
      assert.throws(() => countArg(bad), (err: unknown) => err instanceof InvalidArgumentError && /not a whole number/.test(err.message));
    });
  }
});

describe('collect', () => {
  test('appends each value of a repeatable flag', () => {
    assert.deepEqual(collect('a'), ['a']);
    assert.deepEqual(collect('b', ['a']), ['a', 'b']);
  });

  test('works as a commander argParser: repeated flags collect, bad values fail with the flag named', () => {
    const parse = (argv: string[]): Record<string, unknown> => {
      const cmd = new Command()
        .exitOverride()
        .configureOutput({ writeErr: () => undefined })
        .option('--size <size>', 'size', sizeArg)
        .option('--tag <tag>', 'tag', collect, [] as string[]);
      cmd.parse(argv, { from: 'user' });
      return cmd.opts();
    };
    assert.deepEqual(parse(['--size', '1KiB', '--tag', 'x', '--tag', 'y']), { size: 1024, tag: ['x', 'y'] });
    assert.throws(() => parse(['--size', 'big']), (err: unknown) => err instanceof Error && /--size <size>.*cannot parse 'big'/.test(err.message));
  });
});
