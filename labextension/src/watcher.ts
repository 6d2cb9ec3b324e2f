import { ISessionContext, Notification } from '@jupyterlab/apputils';
import { Cell, CodeCell } from '@jupyterlab/cells';
import { NotebookPanel } from '@jupyterlab/notebook';
import {
  Kernel,
  KernelMessage,
  ServerConnection,
  Session
} from '@jupyterlab/services';

import { TranslationBundle } from '@jupyterlab/translation';
import { UUID } from '@lumino/coreutils';

import { IResumeAnswer, fetchCheckpoint, requestAPI } from './api';
import {
  IExecution,
  IResumePlan,
  KernelStatusRules,
  cellBySource,
  magicLine,
  planResume,
  resumeMessage
} from './rules';

/** What a watcher needs from the plugin. */
export interface IWatchOptions {
  /** The `autoResume` setting, read when a crash happens. */
  autoResume: () => boolean;
  serverSettings: ServerConnection.ISettings;
  trans: TranslationBundle;
}

/** An execution and the kernel process (its session id) that ran it. */
interface ITracked extends IExecution {
  kernelSession: string | null;
}

const RUNNING_WIDGETS = '.resumable-widget[data-status="running"]';

/**
 * Watches one notebook's kernel: records the cells it runs (from the kernel's messages, so runs
 * from another tab count too), tells the widgets when the kernel dies and comes back, and offers
 * (or, with `autoResume`, does) the resume once the server grants it to this tab.
 */
export class NotebookWatcher {
  constructor(
    private readonly _panel: NotebookPanel,
    private readonly _options: IWatchOptions
  ) {
    const context = _panel.sessionContext;
    context.statusChanged.connect(this._onStatus, this);
    context.sessionChanged.connect(
      (_, change) => this._watchSession(change.newValue),
      this
    );
    this._watchSession(context.session);
  }

  private _watchSession(session: Session.ISessionConnection | null): void {
    this._session?.anyMessage.disconnect(this._onMessage, this);
    this._session = session;
    session?.anyMessage.connect(this._onMessage, this);
  }

  private _onMessage(_: unknown, args: Kernel.IAnyMessageArgs): void {
    const msg = args.msg;
    if (args.direction === 'send') {
      if (msg.header.msg_type === 'execute_request') {
        if (!this._resuming) {
          this._forget(); // the user runs cells in the new kernel: the notice is out of date
        }
        const content =
          msg.content as KernelMessage.IExecuteRequestMsg['content'];
        const cellId = (msg.metadata as { cellId?: string }).cellId ?? null;
        this._runs.set(msg.header.msg_id, {
          cellId,
          code: content.code,
          executionCount: null,
          state: 'queued',
          kernelSession: null
        });
      }
      return;
    }
    const parent = (msg.parent_header as { msg_id?: string }).msg_id;
    if (msg.channel !== 'iopub' || !parent) {
      return;
    }
    let run = this._runs.get(parent);
    if (msg.header.msg_type === 'execute_input') {
      // A cell another tab runs: its id is found by its source when the crash comes.
      const content = msg.content as KernelMessage.IExecuteInputMsg['content'];
      run = run ?? {
        cellId: null,
        code: content.code,
        executionCount: null,
        state: 'queued',
        kernelSession: null
      };
      this._runs.set(parent, run);
      run.executionCount = content.execution_count;
      run.state = 'running';
      run.kernelSession = msg.header.session;
    } else if (run && msg.header.msg_type === 'error') {
      run.state = 'error';
    } else if (
      run?.state === 'running' &&
      msg.header.msg_type === 'status' &&
      (msg.content as KernelMessage.IStatusMsg['content']).execution_state ===
        'idle'
    ) {
      run.state = 'ok';
    }
  }

  private _onStatus(_: ISessionContext, status: Kernel.Status): void {
    const event = this._rules.observe(status);
    if (event === 'died') {
      this._onDied();
    } else if (event === 'back') {
      void this._onBack();
    } else if (event === 'restarted-by-user') {
      this._runs.clear();
      this._forget();
    }
  }

  /** Drop the dead kernel's cells and the notification about them (the offer, or "Resuming"). */
  private _forget(): void {
    this._deadRuns = [];
    this._dismiss();
  }

  private _dismiss(): void {
    if (this._notice) {
      Notification.dismiss(this._notice);
      this._notice = null;
    }
  }

  /** The kernel died: keep what it ran, and tell the running widgets the true last checkpoint. */
  private _onDied(): void {
    this._deaths += 1;
    this._forget();
    this._deadRuns = [...this._runs.values()];
    this._runs.clear();
    this._dead = Array.from(
      this._panel.node.querySelectorAll<HTMLElement>(RUNNING_WIDGETS)
    );
    this._told = Promise.all(
      this._dead.map(async element => {
        const { directory, key } = element.dataset;
        const checkpoint =
          directory && key
            ? await fetchCheckpoint(
                directory,
                key,
                this._options.serverSettings
              )
            : null;
        element.dispatchEvent(
          new CustomEvent('resumable-kernel-died', { detail: { checkpoint } })
        );
      })
    ).then(() => undefined);
  }

  /** The server restarted the kernel: tell the widgets, then offer or do the resume. */
  private async _onBack(): Promise<void> {
    await this._told;
    for (const element of this._dead) {
      element.dispatchEvent(new CustomEvent('resumable-kernel-restarted'));
    }
    this._dead = [];
    const plan = this._plan();
    if (!plan) {
      return;
    }
    if (plan.edited.length || plan.missing.length) {
      this._ask(plan);
    } else if (this._options.autoResume()) {
      await this._resume(true, false);
    } else {
      this._notice = Notification.info(resumeMessage(plan, false), {
        autoClose: false,
        actions: [
          {
            label: this._options.trans.__('Resume'),
            caption: this._options.trans.__(
              'Run these cells again in the new kernel'
            ),
            displayType: 'accent',
            callback: () => void this._resume(false, false)
          }
        ]
      });
    }
  }

  /** A cell changed since it ran: say so, and run only if the user says "Resume anyway". */
  private _ask(plan: IResumePlan): void {
    this._notice = Notification.warning(resumeMessage(plan, false), {
      autoClose: false,
      actions: [
        {
          label: this._options.trans.__('Resume anyway'),
          caption: this._options.trans.__('Run the cells as they are now'),
          displayType: 'warn',
          callback: () => void this._resume(false, true)
        }
      ]
    });
  }

  /** The plan for the cells the dead kernel ran, against the notebook as it is now. */
  private _plan(): IResumePlan | null {
    const cells = this._panel.content.widgets.map(cell => ({
      id: cell.model.id,
      source: cell.model.sharedModel.getSource()
    }));
    const runs = this._deadRuns.map(run => ({
      ...run,
      cellId: run.cellId ?? cellBySource(run.code, cells)
    }));
    return planResume(runs, id => cells.find(c => c.id === id)?.source);
  }

  private _cell(cellId: string): Cell | undefined {
    return this._panel.content.widgets.find(cell => cell.model.id === cellId);
  }

  /** Ask the server for the resume (one tab wins; automatic ones are limited), then run the cells. */
  private async _resume(automatic: boolean, anyway: boolean): Promise<void> {
    const plan = this._plan();
    if (this._resuming || !plan) {
      return;
    }
    this._dismiss();
    if (!anyway && (plan.edited.length || plan.missing.length)) {
      this._ask(plan); // edited while the offer was shown
      return;
    }
    const interrupted = plan.interrupted as ITracked;
    const cellId = plan.cellIds[plan.cellIds.length - 1];
    const widget = this._cell(cellId)?.node.querySelector<HTMLElement>(
      '.resumable-widget[data-key]'
    );
    const context = this._panel.sessionContext;
    this._resuming = true;
    try {
      const { status, body } = await requestAPI<IResumeAnswer>(
        'resume',
        this._options.serverSettings,
        {
          method: 'POST',
          body: JSON.stringify({
            kernel_id: context.session?.kernel?.id,
            kernel_session: interrupted.kernelSession ?? 'unknown',
            tab: this._id,
            notebook: context.path,
            cell_id: cellId,
            magic_line: magicLine(interrupted.code),
            directory: widget?.dataset.directory,
            key: widget?.dataset.key,
            automatic
          })
        }
      );
      if (!body.granted) {
        // 409: another tab resumes these cells; otherwise a refusal that stays until read.
        const reason = body.reason ?? 'Not resumed.';
        if (status === 409) {
          Notification.info(reason, { autoClose: 5000 });
        } else {
          Notification.warning(reason, { autoClose: false });
        }
        return;
      }
      this._deadRuns = [];
      if (automatic) {
        this._notice = Notification.info(resumeMessage(plan, true), {
          autoClose: 10000
        });
      }
      await this._run(plan, context);
    } catch (reason) {
      Notification.error(`Could not resume: ${reason}`, { autoClose: false });
    } finally {
      this._resuming = false;
    }
  }

  /** Run the plan's cells in order; stop at the first that does not end well. */
  private async _run(
    plan: IResumePlan,
    context: ISessionContext
  ): Promise<void> {
    const deaths = this._deaths;
    for (const [i, cellId] of plan.cellIds.entries()) {
      const cell = this._cell(cellId);
      const reply =
        cell instanceof CodeCell
          ? await CodeCell.execute(cell, context, {
              recordTiming: false
            }).catch(
              () => undefined // the kernel died under it: that crash has its own notification
            )
          : undefined;
      if (!reply || reply.content.status !== 'ok') {
        if (this._deaths === deaths) {
          Notification.warning(
            `Resume stopped at the cell that ran as [${plan.executionCounts[i]}]: it raised an error, so the cells after it were not run.`,
            { autoClose: false }
          );
        }
        return;
      }
    }
  }

  /** This watcher's id: the server grants a resume to one watcher (tab, or view of a notebook). */
  private readonly _id = UUID.uuid4();
  private readonly _rules = new KernelStatusRules();
  private _session: Session.ISessionConnection | null = null;
  private _runs = new Map<string, ITracked>();
  private _deadRuns: ITracked[] = [];
  private _dead: HTMLElement[] = [];
  private _told: Promise<void> = Promise.resolve();
  private _notice: string | null = null;
  private _resuming = false;
  private _deaths = 0;
}
