"""Training side of posecast: synthetic data, dataset preparation, training and evaluation.

realtime/ never imports this package: a trained model is loaded from its checkpoint alone
(see ``models.checkpoint``).
"""
