"""The top floor: the ``posecast`` command line and the tools that drive the whole system.

The layers below point one way (tests/test_layers.py checks it):

    posecast/  cli.py, demo.py, bench.py, stress.py, process.py  -> may import anything
    clients/   capture client                                     -> realtime/, models/
    realtime/  engines, server, sessions, wire protocol           -> models/
    trainer/   datasets, training, evaluation                     -> models/
    models/    networks, renderers, landmark layout, detector     -> models/ only

Everything here starts or combines pieces of several layers: ``demo`` runs a server process and a capture client,
``bench`` and ``stress`` time and hammer a live server, ``process.server_process`` runs ``posecast serve`` in a
child process.
"""
