"""The engine as Ray Serve replicas (`python launch.py --ray`): one replica per GPU, routed by model.

Imported only when `--ray` is given; it needs the `cluster` extra (`pip install -e ".[cluster]"`, which brings
`ray[serve]`). The front process keeps the UI, the API and the one job queue (`ClusterJobQueue`): per-user positions,
progress and interrupts stay where they were. Each job is sent through a Serve handle with the job's model as the
multiplexed model id (Ray Serve's model multiplexing), so it goes preferably to a replica already holding that
model; progress and previews stream back from the replica (a streaming response), interrupts go to it through a
small control actor (`ClusterControl`), which also carries the calls every replica must run (settings, unloading).

Modules: `routing` (model ids), `control` (the control actor), `replica` (the Serve deployment), `client` (the front
side: starting Serve, running a call on a replica), `queue` (the job queue over it), `wiring` (from the launch
settings to that queue). Replicas on other machines need the same install and the models and outputs folders at the
same paths: Ray moves no files.
"""
