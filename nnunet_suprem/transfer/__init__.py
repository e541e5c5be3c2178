"""Moving pre-trained weights into new nnU-Net plans.

- :mod:`~nnunet_suprem.transfer.checkpoint`: reading checkpoints (``weights_only=True``), prefixes;
- :mod:`~nnunet_suprem.transfer.nnssl`: nnssl checkpoints' adaptation plan (network, pre-training, key mapping);
- :mod:`~nnunet_suprem.transfer.state_dict`: selecting and adapting tensors, the per-key report;
- :mod:`~nnunet_suprem.transfer.apply`: nnU-Net networks from plans, files for ``-pretrained_weights``;
- :mod:`~nnunet_suprem.transfer.defaults`: the defaults, free of torch imports;
- :mod:`~nnunet_suprem.transfer.command`: ``nnunet-suprem transfer-weights``.
"""
