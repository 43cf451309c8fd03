"""Data preparation: the built-in shapes caption set (``shapes``), Karpathy JSON + images → the input files
(``prepare``, ``images``, ``images_h5``, ``manifest``), the feature cache (``features``), the shapes encoder's
pretraining (``pretrain``) and the settings the kit trains with on shapes (``recipe``)."""
