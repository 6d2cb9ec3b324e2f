import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';

// eslint-disable-next-line jupyter/prefer-lazy-imports -- notebooks open at start are watched at once
import { NotebookWatcher } from './watcher';

const PLUGIN_ID = 'resumable-magic:plugin';
const OPEN_BOARD = 'resumable-magic:open-board';

/**
 * Resumes `%%resumable` cells after a kernel crash (a Resume notification, or the `autoResume`
 * setting), tells their widgets when the kernel dies and comes back, and opens the board of runs.
 */
const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'Resumes %%resumable cells after a kernel crash, and opens the board of runs.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ISettingRegistry, ICommandPalette, ILauncher, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    settingRegistry: ISettingRegistry | null,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    translator: ITranslator | null
  ) => {
    const trans = (translator ?? nullTranslator).load('resumable_magic');
    let autoResume = false;
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const read = () => {
            autoResume = settings.get('autoResume').composite === true;
          };
          read();
          settings.changed.connect(read);
        })
        .catch(reason => {
          console.error('resumable-magic: cannot load its settings', reason);
        });
    }
    const options = {
      autoResume: () => autoResume,
      serverSettings: app.serviceManager.serverSettings,
      trans
    };
    const watch = (panel: NotebookPanel) => new NotebookWatcher(panel, options);
    notebooks.forEach(watch);
    notebooks.widgetAdded.connect((_, panel) => watch(panel));

    app.commands.addCommand(OPEN_BOARD, {
      label: trans.__('Resumable runs'),
      caption: trans.__(
        'The board of every resumable run, in a new browser tab'
      ),
      describedBy: { args: { type: 'object', properties: {} } },
      execute: () => {
        const base = app.serviceManager.serverSettings.baseUrl;
        window.open(URLExt.join(base, 'resumable/'), '_blank');
      }
    });
    palette?.addItem({ command: OPEN_BOARD, category: trans.__('Resumable') });
    launcher?.add({ command: OPEN_BOARD, category: trans.__('Other') });
  }
};

export default plugin;
