import {
  IExecution,
  KernelStatusRules,
  cellBySource,
  isResumableCell,
  magicLine,
  planResume,
  resumeMessage
} from '../rules';

const LOOP = '%%resumable --save total\nfor i in range(10):\n    total += i';

function run(
  cellId: string | null,
  code: string,
  executionCount: number | null,
  state: IExecution['state']
): IExecution {
  return { cellId, code, executionCount, state };
}

function feed(statuses: string[]): (string | null)[] {
  const rules = new KernelStatusRules();
  return statuses.map(s => rules.observe(s));
}

describe('kernel status rules', () => {
  it('a crash the server restarts is a death, and the next idle is the kernel back', () => {
    expect(
      feed(['idle', 'busy', 'restarting', 'autorestarting', 'starting', 'idle'])
    ).toEqual([null, null, null, 'died', null, 'back']);
  });

  it('a dead kernel is a death once, and a kernel the user starts after it is not "back"', () => {
    expect(
      feed(['busy', 'dead', 'dead', 'restarting', 'starting', 'idle'])
    ).toEqual([null, 'died', null, null, null, 'restarted-by-user']);
  });

  it('a restart the user asked for is not a death', () => {
    const events = feed(['busy', 'restarting', 'starting', 'idle', 'busy', 'idle']);
    expect(events).not.toContain('died');
    expect(events).not.toContain('back');
    expect(events[3]).toBe('restarted-by-user');
  });

  it('a lost websocket (status unknown, then the kernel busy again) is not a death', () => {
    expect(feed(['busy', 'unknown', 'busy', 'idle'])).toEqual([
      null,
      null,
      null,
      null
    ]);
  });

  it('a second crash after the kernel is back is a death again', () => {
    expect(
      feed(['busy', 'autorestarting', 'idle', 'busy', 'autorestarting', 'idle'])
    ).toEqual([null, 'died', 'back', null, 'died', 'back']);
  });
});

describe('which cells run again', () => {
  const sources: Record<string, string> = {
    a: 'import numpy',
    b: 'total = 0',
    c: LOOP,
    d: 'print(total)'
  };
  const now = (id: string) => sources[id];

  it('the cells that ran, in execution order, through the interrupted cell', () => {
    const plan = planResume(
      [
        run('b', 'total = 0', 2, 'ok'),
        run('a', 'import numpy', 1, 'ok'),
        run('c', LOOP, 3, 'running'),
        run('d', 'print(total)', null, 'queued')
      ],
      now
    );
    expect(plan?.cellIds).toEqual(['a', 'b', 'c']);
    expect(plan?.executionCounts).toEqual([1, 2, 3]);
    expect(plan?.edited).toEqual([]);
    expect(plan?.missing).toEqual([]);
  });

  it('a cell run twice runs twice; a cell that raised is left out', () => {
    const plan = planResume(
      [
        run('b', 'total = 0', 1, 'ok'),
        run('a', 'import numpy', 2, 'error'),
        run('b', 'total = 0', 3, 'ok'),
        run('c', LOOP, 4, 'running')
      ],
      now
    );
    expect(plan?.cellIds).toEqual(['b', 'b', 'c']);
  });

  it('nothing to resume unless a %%resumable cell was running', () => {
    expect(
      planResume(
        [run('b', 'total = 0', 1, 'ok'), run('d', 'print(total)', 2, 'running')],
        now
      )
    ).toBeNull();
    expect(planResume([run('c', LOOP, 1, 'ok')], now)).toBeNull();
  });

  it('a cell edited since it ran is reported, to ask first', () => {
    const plan = planResume(
      [run('b', 'total = 10', 1, 'ok'), run('c', LOOP, 2, 'running')],
      now
    );
    expect(plan?.edited).toEqual(['b']);
  });

  it('a cell deleted since it ran, or not told apart, is reported as missing', () => {
    const plan = planResume(
      [
        run('gone', 'x = 1', 1, 'ok'),
        run(null, 'y = 2', 2, 'ok'),
        run('c', LOOP, 3, 'running')
      ],
      now
    );
    expect(plan?.missing).toEqual([1, 2]);
    expect(plan?.cellIds).toEqual(['c']);
  });

  it('a cell run from another tab is found by its source when that is unique', () => {
    const cells = Object.entries(sources).map(([id, source]) => ({ id, source }));
    expect(cellBySource(LOOP, cells)).toBe('c');
    expect(cellBySource('nowhere', cells)).toBeNull();
    expect(
      cellBySource('x', [
        { id: '1', source: 'x' },
        { id: '2', source: 'x' }
      ])
    ).toBeNull();
  });
});

describe('texts', () => {
  it('recognises the magic only on the first line', () => {
    expect(isResumableCell('  %%resumable --save x\nfor i in r: pass')).toBe(true);
    expect(isResumableCell('# %%resumable')).toBe(false);
    expect(isResumableCell('x = 1\n%%resumable')).toBe(false);
    expect(isResumableCell('%%resumable_status')).toBe(false);
    expect(magicLine('\n%%resumable --dir d --save x\nfor i in r: pass')).toBe(
      '%%resumable --dir d --save x'
    );
  });

  it('the notification says what runs again and that side effects repeat, in a toast', () => {
    const plan = planResume(
      [run('b', 'total = 0', 1, 'ok'), run('c', LOOP, 2, 'running')],
      (id: string) => ({ b: 'total = 0', c: LOOP })[id]
    )!;
    const text = resumeMessage(plan, false);
    expect(text).toBe(
      'The kernel died in cell [2]. Resume reruns [1], [2]: side effects repeat, the loop continues from its checkpoint.'
    );
    expect(resumeMessage(plan, true)).toContain('Resuming: rerunning [1], [2];');
    const many = { ...plan, executionCounts: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] };
    expect(resumeMessage(many, false)).toContain('reruns 12 cells, [1] to [12]:');
    const edited = { ...plan, edited: ['b'] };
    for (const message of [text, resumeMessage(edited, false)]) {
      expect(message.length).toBeLessThanOrEqual(140);
    }
    expect(resumeMessage(edited, false)).toContain('edited or deleted');
  });
});
