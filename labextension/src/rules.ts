/**
 * The rules of resuming, as pure functions (no JupyterLab import), so that jest tests them alone:
 * when a kernel status change is a crash, and which cells run again after one.
 */

/** One execution of a cell in one kernel process, as seen on the kernel's messages. */
export interface IExecution {
  /** The cell's id (sent by this tab in the request's metadata, or matched by source). */
  cellId: string | null;
  /** The code the kernel ran. */
  code: string;
  /** The kernel's execution count (from `execute_input`); null until the kernel took it. */
  executionCount: number | null;
  /** queued: sent, not started; running: started, no end seen; ok/error: how it ended. */
  state: 'queued' | 'running' | 'ok' | 'error';
}

/** What a kernel status change means for resuming. */
export type KernelEvent = 'died' | 'back' | 'restarted-by-user' | null;

/**
 * Reads a kernel's status changes. A crash is `autorestarting` (the server saw the process die
 * and restarts it) or `dead` (it could not); the kernel is `back` at its first `idle` after
 * `autorestarting` (a kernel started after `dead` is one the user started). A restart the
 * user asked for shows `restarting` and then `idle` with no `autorestarting` between. A lost
 * websocket changes the connection status, not these, and a dropped comm changes neither.
 */
export class KernelStatusRules {
  /** Feed the next status; returns what it means. */
  observe(status: string): KernelEvent {
    const previous = this._status;
    this._status = status;
    if (status === 'dead') {
      // Lab does not restart a dead kernel by itself: a kernel after it is one the user started.
      const first = !this._crashed && previous !== 'dead';
      this._crashed = false;
      this._userRestart = false;
      return first ? 'died' : null;
    }
    if (status === 'autorestarting') {
      const first = !this._crashed;
      this._crashed = true;
      this._userRestart = false;
      return first ? 'died' : null;
    }
    if (status === 'restarting') {
      // The server also sends `restarting` just before `autorestarting`: decided at `idle`.
      this._userRestart = true;
      return null;
    }
    if (status === 'idle' && this._crashed) {
      this._crashed = false;
      return 'back';
    }
    if (status === 'idle' && this._userRestart && previous !== 'idle') {
      this._userRestart = false;
      return 'restarted-by-user';
    }
    return null;
  }

  private _status = 'unknown';
  private _crashed = false;
  private _userRestart = false;
}

const RESUMABLE_MAGIC = /^\s*%%resumable\b/;

/** True for a `%%resumable` cell (a cell magic is the cell's first line). */
export function isResumableCell(code: string): boolean {
  return RESUMABLE_MAGIC.test(code);
}

/** The `%%resumable` line of a cell, or null. */
export function magicLine(code: string): string | null {
  const first = code.replace(/^\s+/, '').split('\n', 1)[0];
  return RESUMABLE_MAGIC.test(first) ? first.trim() : null;
}

/** The cells to run again after a crash, as {@link planResume} decides. */
export interface IResumePlan {
  /** Cell ids in the order the dead kernel ran them, ending with the interrupted cell. */
  cellIds: string[];
  /** Their execution counts in the dead kernel, in the same order. */
  executionCounts: number[];
  /** The interrupted `%%resumable` cell. */
  interrupted: IExecution;
  /** Cells edited since they ran: ask before running anything. */
  edited: string[];
  /** Cells that ran but are no longer in the notebook (or could not be told apart): ask too. */
  missing: number[];
}

/**
 * What runs again after the kernel died: the cells that ran to the end without an error in the
 * dead kernel, in the order of their execution counts, then the interrupted cell, which must be a
 * `%%resumable` cell (otherwise null: nothing to resume). Cells queued behind it never started and
 * are left alone. `currentSource(cellId)` is the cell's source now (undefined: deleted).
 */
export function planResume(
  executions: IExecution[],
  currentSource: (cellId: string) => string | undefined
): IResumePlan | null {
  const running = executions.filter(e => e.state === 'running');
  if (running.length !== 1 || !isResumableCell(running[0].code)) {
    return null;
  }
  const interrupted = running[0];
  const ran = executions
    .filter(e => e.state === 'ok' && e.executionCount !== null)
    .sort(
      (a, b) => (a.executionCount as number) - (b.executionCount as number)
    );
  const plan: IResumePlan = {
    cellIds: [],
    executionCounts: [],
    interrupted,
    edited: [],
    missing: []
  };
  for (const execution of [...ran, interrupted]) {
    const count = execution.executionCount as number;
    const source =
      execution.cellId === null ? undefined : currentSource(execution.cellId);
    if (execution.cellId === null || source === undefined) {
      plan.missing.push(count);
      continue;
    }
    if (source !== execution.code && !plan.edited.includes(execution.cellId)) {
      plan.edited.push(execution.cellId);
    }
    plan.cellIds.push(execution.cellId);
    plan.executionCounts.push(count);
  }
  return plan;
}

/** The cell whose source is `code`, when exactly one cell has it (a run from another tab). */
export function cellBySource(
  code: string,
  cells: { id: string; source: string }[]
): string | null {
  const found = cells.filter(c => c.source === code);
  return found.length === 1 ? found[0].id : null;
}

/**
 * The text of the notification (a toast shows 140 characters): what runs again, and what that
 * costs. `automatic`: the `autoResume` setting runs them now; else the user is asked.
 */
export function resumeMessage(plan: IResumePlan, automatic: boolean): string {
  const died = `The kernel died in cell [${plan.interrupted.executionCount}].`;
  const counts = plan.executionCounts.map(c => `[${c}]`);
  const cells =
    counts.length === 1
      ? 'it'
      : counts.length <= 4
        ? counts.join(', ')
        : `${counts.length} cells, ${counts[0]} to ${counts[counts.length - 1]}`;
  const cost = 'side effects repeat, the loop continues from its checkpoint.';
  if (plan.edited.length || plan.missing.length) {
    return `${died} Cells were edited or deleted since they ran: check them. Resume anyway reruns ${cells}; side effects repeat.`;
  }
  return automatic
    ? `${died} Resuming: rerunning ${cells}; ${cost}`
    : `${died} Resume reruns ${cells}: ${cost}`;
}
