import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { notFound } from '../http/errors.js';
import { errorResponses } from '../http/schemas.js';
import type { JobRunner } from '../jobs/runner.js';

const JobStatusView = Type.Object(
  {
    job: Type.String(),
    outcome: Type.String({ description: 'ok | error | skipped (another instance held the job lock) | running | never' }),
    lastRunAt: Type.Optional(Type.String()),
    durationMs: Type.Optional(Type.Number()),
    error: Type.Optional(Type.String()),
    details: Type.Optional(Type.Object({}, { additionalProperties: true })),
  },
  { additionalProperties: false },
);

const JobName = Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,63}$', description: 'job name, as listed by GET /api/operations/jobs' });

/** Admin view of the maintenance jobs and a way to run one now (still under the job's lock). */
export function operationsRoutes(jobs: JobRunner): FastifyPluginAsyncTypebox {
  return async (app) => {
    const admin = { scope: 'admin' } as const;

    app.get(
      '/api/operations/jobs',
      {
        config: admin,
        schema: {
          tags: ['operations'],
          summary: "this instance's view of each maintenance job's last run (all instances: /health)",
          response: { 200: Type.Object({ instanceId: Type.String(), items: Type.Array(JobStatusView) }), ...errorResponses },
        },
      },
      async () => ({ instanceId: jobs.instanceId, items: jobs.statuses() }),
    );

    app.post(
      '/api/operations/jobs/:name/run',
      {
        config: admin,
        schema: {
          tags: ['operations'],
          summary: 'run a maintenance job now on this instance; outcome "skipped" when another instance is running it',
          params: Type.Object({ name: JobName }),
          response: { 200: JobStatusView, ...errorResponses },
        },
      },
      async (req) => {
        if (!jobs.names().includes(req.params.name)) throw notFound(`no job named ${req.params.name}`, 'JOB_NOT_FOUND');
        return jobs.runNow(req.params.name);
      },
    );
  };
}
