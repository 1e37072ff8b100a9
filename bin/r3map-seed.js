#!/usr/bin/env node
import { main } from '../dist/src/cli/seed.js';

main();
