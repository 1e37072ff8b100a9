#!/usr/bin/env node
import { main } from '../dist/src/cli/mount.js';

main();
