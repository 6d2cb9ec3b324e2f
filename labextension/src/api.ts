import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** The newest good checkpoint of a run, read from disk by the server. */
export interface ICheckpoint {
  iteration: number | null;
  position: unknown;
  total: number | null;
  time: string | null;
  folder_exists: boolean;
}

/** The server's answer to a request to resume. */
export interface IResumeAnswer {
  granted: boolean;
  reason?: string;
  key?: string;
  directory?: string;
  automatic_resumes?: number;
  limit?: number;
}

/**
 * Call the server extension's API under `<base_url>/resumable/api/` (ServerConnection adds the
 * token and the XSRF header). Returns the status and the JSON body.
 */
export async function requestAPI<T>(
  endPoint: string,
  serverSettings: ServerConnection.ISettings,
  init: RequestInit = {}
): Promise<{ status: number; body: T }> {
  const url = URLExt.join(serverSettings.baseUrl, 'resumable', 'api', endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, serverSettings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as any);
  }
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    throw new ServerConnection.ResponseError(response, text);
  }
  if (!response.ok && (body === null || body.granted === undefined)) {
    throw new ServerConnection.ResponseError(response, body?.message || text);
  }
  return { status: response.status, body: body as T };
}

/** The true last checkpoint of the run `key` in `directory`, or null when the server cannot say. */
export async function fetchCheckpoint(
  directory: string,
  key: string,
  serverSettings: ServerConnection.ISettings
): Promise<ICheckpoint | null> {
  const query = URLExt.objectToQueryString({ directory, key });
  try {
    return (await requestAPI<ICheckpoint>(`checkpoint${query}`, serverSettings))
      .body;
  } catch (reason) {
    console.error('resumable-magic: cannot read the last checkpoint', reason);
    return null;
  }
}
