/** The `cloudlet vm …` commands, in the order the help lists them. */
import type { Command } from '../command.ts';
import { vmActionCommands } from './vm-actions.ts';
import { vmCreateCommand } from './vm-create.ts';
import { vmConsoleLogCommand, vmIpCommand, vmListCommand, vmShowCommand } from './vm-queries.ts';

export const vmCommands: readonly Command[] = [vmCreateCommand, vmListCommand, vmShowCommand, vmIpCommand, ...vmActionCommands, vmConsoleLogCommand];
