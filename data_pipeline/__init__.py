"""tf.data input pipelines and batched augmentation for AlexNet."""
