#!/usr/bin/env node
import { main } from '../dist/src/cli/bench.js';

main();
